"""`manage.py tenants create|list|suspend|activate|delete|deletions|export`."""
from __future__ import annotations

import os
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import deletion, services
from tenants.export import write_export
from tenants.models import Tenant, TenantDeletion


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
        delete = actions.add_parser("delete", help="Delete a tenant and all its data (suspends it at once; the rest "
                                                   "runs as a background job unless --now).")
        delete.add_argument("slug")
        delete.add_argument("--yes", action="store_true", help="Do not ask for the slug again.")
        delete.add_argument("--now", action="store_true", help="Delete in this process, printing progress, "
                                                               "instead of in the task cluster.")
        actions.add_parser("deletions", help="List tenant deletions: status and rows removed so far.")
        export = actions.add_parser("export", help="Write all the tenant's data as JSON lines (no secrets).")
        export.add_argument("slug")
        export.add_argument("--output", "-o", help="File to write (default: standard output).")

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
        elif action == "delete":
            self._delete(get_tenant(options["slug"]), yes=options["yes"], now=options["now"])
        elif action == "deletions":
            for job in TenantDeletion.objects.all()[:100]:
                finished = f"finished {job.finished_at:%Y-%m-%d %H:%M}" if job.finished_at else ""
                self.stdout.write(f"#{job.pk:<5} {job.slug:<30} {job.status:<8} {job.removed:>12} rows  "
                                  f"asked {job.created_at:%Y-%m-%d %H:%M} {finished}".rstrip())
                if job.error:
                    self.stdout.write(f"       {job.error}")
        elif action == "export":
            self._export(get_tenant(options["slug"]), options["output"])
        else:
            tenant = get_tenant(options["slug"])
            tenant.status = Tenant.Status.SUSPENDED if action == "suspend" else Tenant.Status.ACTIVE
            tenant.save(update_fields=["status", "updated_at"])
            self.stdout.write(self.style.SUCCESS(f"Tenant {tenant.slug} is now {tenant.status}."))


    def _delete(self, tenant: Tenant, *, yes: bool, now: bool) -> None:
        if not yes:
            if not sys.stdin.isatty():
                raise CommandError("Deleting a tenant removes all its data for good: add --yes to confirm.")
            if input(f"Type {tenant.slug} to delete it and all its data: ").strip() != tenant.slug:
                raise CommandError("Not confirmed; nothing was deleted.")
        job, created = deletion.request_deletion(tenant, requested_by="manage.py tenants delete", background=not now)
        if not now:
            state = "queued" if created else f"already {job.status}"
            self.stdout.write(self.style.SUCCESS(f"Tenant {tenant.slug} is suspended; its deletion #{job.pk} is {state}."))
            self.stdout.write("Follow it with: manage.py tenants deletions (or in the admin: Tenants › Tenant deletions).")
            return
        deletion.run(job.pk, time_limit=float("inf"))
        job.refresh_from_db()
        for kind, count in job.counts.items():
            self.stdout.write(f"  {kind:<40} {count:>10}")
        self.stdout.write(self.style.SUCCESS(f"Deleted tenant {tenant.slug}: {job.removed} rows."))

    def _export(self, tenant: Tenant, output: str | None) -> None:
        if output is None:
            counts = write_export(tenant, self.stdout)
        else:
            # Readable by its owner only: it holds everything the tenant sent.
            descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(descriptor, 0o600)  # an existing file keeps no wider mode
            with open(descriptor, "w", encoding="utf-8") as out:
                counts = write_export(tenant, out)
        summary = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        self.stderr.write(f"Exported tenant {tenant.slug}: {summary}.")


def get_tenant(slug: str) -> Tenant:
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise CommandError(f"No tenant with slug {slug!r}.") from None
