from django.apps import AppConfig


class PlatformConfig(AppConfig):
    """Project-wide pieces that belong to no single app: system checks and operator commands."""

    name = "config"
    label = "platform_config"
    verbose_name = "Modelgate platform"

    def ready(self) -> None:
        from config import checks  # noqa: F401  (registers the system checks)
        from core.metrics import breaker_changed
        from inference import breaker

        if breaker_changed not in breaker.state_listeners:
            breaker.state_listeners.append(breaker_changed)  # breaker states in /metrics
