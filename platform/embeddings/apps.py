from django.apps import AppConfig
from django.db.models.signals import post_migrate


class EmbeddingsConfig(AppConfig):
    name = "embeddings"
    verbose_name = "Embeddings collections"

    def ready(self) -> None:
        from embeddings.tasks import ensure_schedules

        post_migrate.connect(ensure_schedules, sender=self)
