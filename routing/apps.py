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
        from routing.retention import forget_cached_results
        from tenants.deletion import tenant_deleted

        tenant_deleted.connect(forget_cached_results, dispatch_uid="routing-forget-cached-results")
        for model in (RoutingPolicy, ModelSpec, ProviderCredential):
            post_save.connect(configuration.forget, sender=model, dispatch_uid=f"routing-cache-save-{model.__name__}")
            post_delete.connect(configuration.forget, sender=model, dispatch_uid=f"routing-cache-delete-{model.__name__}")
