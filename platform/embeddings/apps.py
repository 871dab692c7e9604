from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save


class EmbeddingsConfig(AppConfig):
    name = "embeddings"
    verbose_name = "Embeddings collections"

    def ready(self) -> None:
        from embeddings.models import Collection
        from embeddings.services import recent_collections
        from embeddings.tasks import ensure_schedules

        post_migrate.connect(ensure_schedules, sender=self)
        post_save.connect(recent_collections.forget, sender=Collection, dispatch_uid="collection-cache-save")
        post_delete.connect(recent_collections.forget, sender=Collection, dispatch_uid="collection-cache-delete")
        from embeddings.retention import blank_query_previews
        from routing.retention import texts_expired

        texts_expired.connect(blank_query_previews, dispatch_uid="embeddings-search-previews-expire")
