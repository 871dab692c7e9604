from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing and inference records"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from core.recent import configuration
        from registry.models import ModelSpec
        from routing.models import ProviderCredential, RoutingPolicy
        from routing.tasks import ensure_schedules

        post_migrate.connect(ensure_schedules, sender=self)
        for model in (RoutingPolicy, ModelSpec, ProviderCredential):
            post_save.connect(configuration.forget, sender=model, dispatch_uid=f"routing-cache-save-{model.__name__}")
            post_delete.connect(configuration.forget, sender=model, dispatch_uid=f"routing-cache-delete-{model.__name__}")
