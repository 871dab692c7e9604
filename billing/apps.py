from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing, budgets and usage"

    def ready(self) -> None:
        from billing.models import SpendLimit
        from billing.tasks import ensure_schedules
        from core.recent import configuration

        post_migrate.connect(ensure_schedules, sender=self)
        # Sub-limits are read through the configuration cache (billing.services.sub_limits_for).
        post_save.connect(configuration.forget, sender=SpendLimit, dispatch_uid="billing-cache-save-SpendLimit")
        post_delete.connect(configuration.forget, sender=SpendLimit, dispatch_uid="billing-cache-delete-SpendLimit")
