"""Operator screens: collections per tenant with document counts and index status, a search box that
runs a real search in one collection, the vector indexes, ingestion jobs and recorded searches."""
from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.postgres.search import SearchQuery
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from core.errors import ApiError
from embeddings import indexes, ingestion, search, services
from embeddings.filters import InvalidFilter, compile_filter
from embeddings.models import TEXT_SEARCH_CONFIG, Collection, Document, IngestionJob, SearchRecord


_page_index_states: ContextVar[dict[str, indexes.IndexState] | None] = ContextVar("page_index_states", default=None)


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.action(description="Build the missing vector indexes of the selected collections (in the background)")
def build_indexes(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Collection]) -> None:
    for collection in queryset:
        services.request_index(collection)
    modeladmin.message_user(request, "Missing indexes were queued; their status shows on this page.", messages.SUCCESS)


@admin.register(Collection)
class CollectionAdmin(ReadOnly):
    list_display = ["name", "tenant", "model", "dimension", "distance", "document_count", "index_status", "created_at", "search_link"]
    list_filter = ["tenant", "distance", "dimension"]
    search_fields = ["name", "tenant__slug", "=id"]
    list_select_related = ["tenant", "model"]
    actions = [build_indexes]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.is_superuser

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # One catalog query for the page, not one per row (a context variable: the admin is shared by threads).
        token = _page_index_states.set(indexes.index_states())
        try:
            response = super().changelist_view(request, extra_context)
            return response.render() if isinstance(response, TemplateResponse) else response
        finally:
            _page_index_states.reset(token)

    @admin.display(description="index")
    def index_status(self, collection: Collection) -> str:
        return indexes.state_of(collection.dimension, collection.distance, _page_index_states.get()).status

    @admin.display(description="")
    def search_link(self, collection: Collection) -> str:
        return format_html('<a href="{}">search</a>', reverse("admin:embeddings_collection_search", args=[collection.pk]))

    def get_urls(self) -> list[Any]:
        return [
            path("<uuid:pk>/search/", self.admin_site.admin_view(self.search_view), name="embeddings_collection_search"),
            path("indexes/", self.admin_site.admin_view(self.indexes_view), name="embeddings_collection_indexes"),
            *super().get_urls(),
        ]

    def search_view(self, request: HttpRequest, pk: Any) -> HttpResponse:
        collection = get_object_or_404(Collection.objects.select_related("tenant", "model"), pk=pk)
        form = OperatorSearchForm(request.GET or None, collection=collection)
        outcome, error = None, None
        if form.is_valid():
            try:
                outcome = search.operator_search(
                    collection=collection, query=form.search_query(), operator=request.user.get_username()
                )
            except ApiError as exc:
                error = str(exc.detail)
        context = {
            **self.admin_site.each_context(request), "title": f"Search {collection}", "collection": collection,
            "form": form, "outcome": outcome, "error": error, "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/embeddings/collection/search.html", context)

    def indexes_view(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST":
            dimension, distance = int(request.POST["dimension"]), request.POST["distance"]
            from django_q.tasks import async_task

            async_task("embeddings.tasks.build_vector_index", dimension, distance, task_name=f"vector index {dimension} {distance}")
            self.message_user(request, f"Building the {dimension}-dimension {distance} index in the background.", messages.SUCCESS)
            return HttpResponseRedirect(request.path)
        states = indexes.index_states()
        rows = [indexes.state_of(dimension, distance, states) for dimension, distance in indexes.needed_indexes()]
        context = {**self.admin_site.each_context(request), "title": "Vector indexes", "rows": rows, "opts": self.model._meta}
        return TemplateResponse(request, "admin/embeddings/collection/indexes.html", context)


class OperatorSearchForm(forms.Form):
    query = forms.CharField(max_length=2000, widget=forms.TextInput(attrs={"size": 80}))
    k = forms.IntegerField(min_value=1, max_value=100, initial=10)
    filter = forms.CharField(required=False, widget=forms.TextInput(attrs={"size": 80}),
                             help_text='JSON, e.g. {"lang": "en", "year": {"$gte": 2020}}')
    hybrid = forms.BooleanField(required=False, help_text="Fuse with a keyword search.")
    exact = forms.BooleanField(required=False, help_text="Compare with every document (no index).")

    def __init__(self, *args: Any, collection: Collection, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.collection = collection

    def clean_filter(self) -> Any:
        raw = self.cleaned_data["filter"].strip()
        try:
            return compile_filter(json.loads(raw) if raw else None, schema=self.collection.metadata_schema)
        except ValueError:
            raise forms.ValidationError("Not valid JSON.") from None
        except InvalidFilter as exc:
            raise forms.ValidationError(str(exc.detail)) from None

    def search_query(self) -> search.SearchQuery:
        data = self.cleaned_data
        return search.SearchQuery(k=data["k"], text=data["query"], filter=data["filter"], hybrid=data["hybrid"], exact=data["exact"])


@admin.register(Document)
class DocumentAdmin(ReadOnly):
    list_display = ["external_id", "collection", "dim", "updated_at"]
    list_filter = ["collection__tenant"]
    search_fields = ["=external_id"]
    list_select_related = ["collection__tenant"]
    show_full_result_count = False
    exclude = ["embedding"]
    readonly_fields = ["collection", "tenant", "external_id", "text", "metadata", "dim", "content_hash", "created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        return super().get_queryset(request).defer("embedding", "search")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Document], search_term: str
    ) -> tuple[QuerySet[Document], bool]:
        """An id, or words of the text: the stored full-text vector answers, not a scan of every text."""
        by_id, duplicates = super().get_search_results(request, queryset, search_term)
        if not search_term.strip():
            return by_id, duplicates
        words = queryset.filter(search=SearchQuery(search_term, config=TEXT_SEARCH_CONFIG, search_type="websearch"))
        return by_id | words, duplicates


@admin.action(description="Resume the selected failed or cancelled jobs")
def resume_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[IngestionJob]) -> None:
    resumed = 0
    for job in queryset.filter(status__in=[IngestionJob.Status.FAILED, IngestionJob.Status.CANCELLED]).defer("source"):
        ingestion.resume_job(job=job)
        resumed += 1
    modeladmin.message_user(request, f"Resumed {resumed} job(s).", messages.SUCCESS)


@admin.action(description="Cancel the selected jobs")
def cancel_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[IngestionJob]) -> None:
    for job in queryset.defer("source"):
        ingestion.cancel_job(job=job)
    modeladmin.message_user(request, "Cancelled.", messages.SUCCESS)


@admin.register(IngestionJob)
class IngestionJobAdmin(ReadOnly):
    list_display = ["created_at", "tenant", "collection", "status", "done", "total", "inserted", "updated", "unchanged",
                    "error_count", "attempts", "finished_at"]
    list_filter = ["status", "tenant"]
    search_fields = ["=id", "=request_id", "collection__name"]
    list_select_related = ["tenant", "collection__tenant"]
    actions = [resume_jobs, cancel_jobs]
    exclude = ["source"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[IngestionJob]:
        return super().get_queryset(request).defer("source")


@admin.register(SearchRecord)
class SearchRecordAdmin(ReadOnly):
    list_display = ["created_at", "tenant", "collection_name", "mode", "k", "rows", "latency_ms", "database_ms", "filtered",
                    "reranked", "operator"]
    list_filter = ["mode", "filtered", "reranked", "tenant"]
    search_fields = ["=request_id", "collection_name", "query_preview"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    show_full_result_count = False
