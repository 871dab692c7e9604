from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing, budgets and usage"

    def ready(self) -> None:
        from billing.tasks import ensure_schedules

        post_migrate.connect(ensure_schedules, sender=self)
