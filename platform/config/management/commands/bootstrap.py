"""First-run setup: an operator account and a demo tenant with a key, each created only once."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from tenants import services
from tenants.models import Tenant

DEMO_TENANT = "demo"


class Command(BaseCommand):
    help = "Create the operator account and the demo tenant if they do not exist yet."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def _models(self) -> None:
        """Register the packaged models; weights that need one-time work are prepared in the background."""
        from django_q.tasks import async_task

        from registry.models import ModelSpec
        from registry.services import TRANSLATION_HINT, register_starter_pack

        added = [slug for slug, outcome in register_starter_pack() if outcome == "registered"]
        if added:
            self.stdout.write(f"Registered the starter models: {', '.join(added)}")
        pending = [spec for spec in ModelSpec.objects.exclude(prepare="") if not Path(spec.local_path).exists()]
        if not settings.MODELGATE_PREPARE_MODELS_ON_START:
            pending = []
        for spec in pending:
            transaction.on_commit(lambda spec_id=spec.pk: async_task("registry.tasks.prepare_model", spec_id))
        if pending:
            self.stdout.write(f"Preparing in the background: {', '.join(s.slug for s in pending)}")
        self.stdout.write(f"Translation: {TRANSLATION_HINT}")

    @transaction.atomic
    def handle(self, *args: Any, base_url: str, **options: Any) -> None:
        base_url = base_url.rstrip("/")
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            username = os.environ.get("MODELGATE_ADMIN_USER") or "admin"
            password = os.environ.get("MODELGATE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(self.style.SUCCESS("Operator account created (shown once):"))
            self.stdout.write(f"  admin:    {base_url}/admin/")
            self.stdout.write(f"  user:     {username}")
            self.stdout.write(f"  password: {password}")
        else:
            self.stdout.write(f"Operator account exists; admin at {base_url}/admin/")

        self._models()
        if Tenant.objects.filter(slug=DEMO_TENANT).exists():
            self.stdout.write(f"Demo tenant '{DEMO_TENANT}' exists; issue more keys with: manage.py keys create {DEMO_TENANT}")
            return
        tenant = services.create_tenant(slug=DEMO_TENANT, name="Demo tenant")
        _, plaintext = services.issue_api_key(tenant=tenant, name="demo")
        self.stdout.write(self.style.SUCCESS(f"Demo tenant '{DEMO_TENANT}' created with an API key (shown once):"))
        self.stdout.write(f"  key:  {plaintext}")
        self.stdout.write(f"  try:  curl -H 'Authorization: Bearer {plaintext}' {base_url}/v1/me")
        self.stdout.write(f"  docs: {base_url}/api/docs/")
