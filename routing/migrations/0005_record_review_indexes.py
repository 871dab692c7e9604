"""The admin's record list reads newest first, unfiltered or by status: btree indexes for both, built
CONCURRENTLY so that a large records table keeps taking writes while they build."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('registry', '0002_model_placement'),
        ('routing', '0004_self_tuning'),
        ('tenants', '0004_token_rate_limits'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='inferencerecord',
            index=models.Index(fields=['-created_at'], name='record_time'),
        ),
        AddIndexConcurrently(
            model_name='inferencerecord',
            index=models.Index(fields=['status', '-created_at'], name='record_status_time'),
        ),
    ]
