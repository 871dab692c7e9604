from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    """pgvector first: collections store their documents' embeddings as `vector` columns."""

    initial = True
    dependencies: list = []
    operations = [VectorExtension()]
