from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        from registry.tasks import ensure_schedules

        post_migrate.connect(ensure_schedules, sender=self)
