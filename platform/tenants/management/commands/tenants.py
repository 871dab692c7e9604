"""`manage.py tenants create|list|suspend|activate`."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import services
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Create and manage tenants."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Create a tenant.")
        create.add_argument("slug")
        create.add_argument("--name", help="Display name (defaults to the slug).")
        actions.add_parser("list", help="List tenants.")
        for action in ("suspend", "activate"):
            sub = actions.add_parser(action, help=f"{action.capitalize()} a tenant.")
            sub.add_argument("slug")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "create":
            try:
                tenant = services.create_tenant(slug=options["slug"], name=options["name"])
            except ValidationError as exc:
                raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()))
            self.stdout.write(self.style.SUCCESS(f"Created tenant {tenant.slug} ({tenant.name})."))
            self.stdout.write(f"Issue a key with: manage.py keys create {tenant.slug} --name default")
        elif action == "list":
            for tenant in Tenant.objects.all():
                keys = tenant.api_keys.usable().count()
                self.stdout.write(f"{tenant.slug:<30} {tenant.status:<10} {keys:>3} active keys  {tenant.name}")
        else:
            tenant = get_tenant(options["slug"])
            tenant.status = Tenant.Status.SUSPENDED if action == "suspend" else Tenant.Status.ACTIVE
            tenant.save(update_fields=["status", "updated_at"])
            self.stdout.write(self.style.SUCCESS(f"Tenant {tenant.slug} is now {tenant.status}."))


def get_tenant(slug: str) -> Tenant:
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise CommandError(f"No tenant with slug {slug!r}.") from None
