from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing and inference records"

    def ready(self) -> None:
        from routing.tasks import ensure_schedules

        post_migrate.connect(ensure_schedules, sender=self)
