"""Operator screens for tenants and keys. A new key's secret is rendered once, never stored."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from tenants import deletion, services
from tenants.models import ApiKey, Scope, Tenant, TenantDeletion

_NEW_SECRETS = "_modelgate_new_api_keys"


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[Scope.ALL.value],
        help_text="'Everything' also grants scopes added in later versions.",
    )

    class Meta:
        model = ApiKey
        fields = ["tenant", "name", "scopes", "rpm_limit", "tpm_limit", "expires_at"]


def _remember_secret(request: HttpRequest, key: ApiKey, plaintext: str) -> None:
    setattr(request, _NEW_SECRETS, getattr(request, _NEW_SECRETS, []) + [(key, plaintext)])


def _secrets_page(request: HttpRequest, next_url: str) -> HttpResponse | None:
    """Show the secrets created by this request, in this response only."""
    created = getattr(request, _NEW_SECRETS, None)
    if not created:
        return None
    return TemplateResponse(
        request,
        "admin/tenants/apikey/created.html",
        {
            **admin.site.each_context(request),
            "title": "Copy the new API key now",
            "created": [{"key": key, "plaintext": plaintext} for key, plaintext in created],
            "next_url": next_url,
        },
    )


def _assign_secret(request: HttpRequest, key: ApiKey) -> None:
    _remember_secret(request, key, key.assign_new_secret())


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    form = ApiKeyForm
    extra = 0
    fields = ["name", "scopes", "rpm_limit", "tpm_limit", "expires_at", "prefix", "state", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "state", "last_used_at", "revoked_at"]
    show_change_link = True
    can_delete = False


@admin.action(description="Suspend the selected tenants (their keys stop working)")
def suspend_tenants(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
    count = queryset.update(status=Tenant.Status.SUSPENDED)
    modeladmin.message_user(request, f"Suspended {count} tenant(s).", messages.SUCCESS)


@admin.action(description="Reactivate the selected tenants")
def activate_tenants(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
    count = queryset.update(status=Tenant.Status.ACTIVE)
    modeladmin.message_user(request, f"Reactivated {count} tenant(s).", messages.SUCCESS)


@admin.action(description="Delete the selected tenants and all their data (in the background)", permissions=["delete"])
def delete_tenants(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Tenant]) -> HttpResponse | None:
    """Ask first, on a page listing what goes; then suspend each tenant and queue its deletion job."""
    if request.POST.get("confirm") != "yes":
        tenants = queryset.annotate(collection_count=Count("collections", distinct=True),
                                    key_count=Count("api_keys", distinct=True))
        for tenant in tenants:
            tenant.records = tenant.inference_records.count()
        return TemplateResponse(request, "admin/tenants/tenant/delete_in_background.html", {
            **modeladmin.admin_site.each_context(request), "title": "Delete tenants and all their data",
            "tenants": tenants, "opts": modeladmin.model._meta, "cancel_url": reverse("admin:tenants_tenant_changelist"),
        })
    who = request.user.get_username()
    for tenant in queryset:
        job, created = deletion.request_deletion(tenant, requested_by=who)
        state = "queued" if created else f"already {job.status}"
        modeladmin.message_user(request, f"Tenant {tenant.slug} is suspended; its deletion is {state}.", messages.SUCCESS)
    return None


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "status", "active_keys", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["slug", "name", "api_keys__prefix", "api_keys__name"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [ApiKeyInline]
    actions = [suspend_tenants, activate_tenants, delete_tenants]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Django's own delete would remove a large tenant in one transaction, in the request: replaced
        # by delete_tenants, which runs batch by batch in the background.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The change page's Delete link: the background deletion's confirmation page, not Django's."""
        from django.shortcuts import redirect

        tenant = self.get_object(request, object_id)
        if tenant is None or not self.has_delete_permission(request, tenant):
            return super().delete_view(request, object_id, extra_context)
        queryset = Tenant.objects.filter(pk=tenant.pk)
        response = delete_tenants(self, request, queryset)
        return response or redirect("admin:tenants_tenantdeletion_changelist")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        now = timezone.now()
        usable = Q(api_keys__revoked_at__isnull=True) & (
            Q(api_keys__expires_at__isnull=True) | Q(api_keys__expires_at__gt=now)
        )
        return super().get_queryset(request).annotate(_active_keys=Count("api_keys", filter=usable))

    @admin.display(description="active keys", ordering="_active_keys")
    def active_keys(self, tenant: Tenant) -> int:
        return tenant._active_keys

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        for inline_form in formset.forms:
            key = inline_form.instance
            if isinstance(key, ApiKey) and key._state.adding and inline_form.has_changed():
                key.tenant = form.instance
                _assign_secret(request, key)
        super().save_formset(request, form, formset, change)

    def response_add(self, request: HttpRequest, obj: Tenant, post_url_continue: str | None = None) -> HttpResponse:
        response = super().response_add(request, obj, post_url_continue)
        return _secrets_page(request, response.get("Location", "")) or response

    def response_change(self, request: HttpRequest, obj: Tenant) -> HttpResponse:
        response = super().response_change(request, obj)
        return _secrets_page(request, response.get("Location", "")) or response


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.usable(now)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.action(description="Revoke the selected keys now")
def revoke_keys(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
    revoked = sum(services.revoke_api_key(key=key) for key in queryset)
    modeladmin.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["name", "tenant", "prefix", "scope_list", "rpm_limit", "tpm_limit", "state", "last_used_at", "expires_at"]
    list_filter = [KeyStateFilter, "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["prefix", "name", "tenant__slug", "tenant__name"]
    readonly_fields = ["prefix", "state", "created_at", "last_used_at", "revoked_at", "replaced_by"]
    autocomplete_fields = ["tenant"]
    actions = [revoke_keys]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        # A key never moves between tenants.
        return self.readonly_fields + (["tenant"] if obj else [])

    @admin.display(description="scopes")
    def scope_list(self, key: ApiKey) -> str:
        return ", ".join(key.scopes)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            _assign_secret(request, obj)
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        response = super().response_add(request, obj, post_url_continue)
        return _secrets_page(request, response.get("Location", "")) or response


@admin.register(TenantDeletion)
class TenantDeletionAdmin(admin.ModelAdmin):
    """Deletions under way and done: what was removed, kind by kind. Rows are written by the job only."""

    list_display = ["slug", "status", "removed_rows", "requested_by", "created_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["slug"]
    readonly_fields = ["tenant_id", "slug", "status", "removed_by_kind", "requested_by", "error", "created_at", "updated_at",
                       "finished_at"]
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TenantDeletion | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TenantDeletion | None = None) -> bool:
        return False

    @admin.display(description="rows removed")
    def removed_rows(self, job: TenantDeletion) -> int:
        return job.removed

    @admin.display(description="removed, by kind")
    def removed_by_kind(self, job: TenantDeletion) -> str:
        return ", ".join(f"{kind}: {count}" for kind, count in job.counts.items()) or "nothing yet"
