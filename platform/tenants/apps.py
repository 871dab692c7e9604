from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants and API keys"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from tenants import openapi  # noqa: F401  (registers the schema extension)
        from tenants.authentication import recent_keys

        # A key, tenant or budget saved in this process is seen by its next request (the cache knows which
        # tenants have no budget); other processes, and queryset updates, wait out MODELGATE_KEY_CACHE_SECONDS.
        for model in ("tenants.ApiKey", "tenants.Tenant", "billing.Budget"):
            post_save.connect(recent_keys.forget, sender=model, dispatch_uid=f"key-cache-save-{model}")
            post_delete.connect(recent_keys.forget, sender=model, dispatch_uid=f"key-cache-delete-{model}")
