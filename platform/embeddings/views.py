"""The collections API. Views parse and authorize (every lookup scoped to the key's tenant); services act."""
from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import NotFound
from embeddings import ingestion, search, services
from embeddings import serializers as s
from embeddings.filters import NO_FILTER
from embeddings.indexes import index_states
from embeddings.models import Collection, IngestionJob
from routing.views import meta
from tenants.models import Scope

REF = OpenApiParameter("ref", OpenApiTypes.STR, OpenApiParameter.PATH, description="The collection's id or its name.")


def parse(serializer_class: type[serializers.Serializer], request: Request, collection: Collection | None = None) -> dict[str, Any]:
    serializer = serializer_class(data=request.data, context={"collection": collection})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class CollectionScoped(APIView):
    required_scope = Scope.COLLECTIONS

    def collection(self, request: Request, ref: str) -> Collection:
        return services.collection_of(tenant=request.auth.tenant, ref=ref)


class CollectionsView(CollectionScoped):
    @extend_schema(responses=s.CollectionSerializer(many=True), summary="The tenant's collections")
    def get(self, request: Request) -> Response:
        collections = Collection.objects.filter(tenant=request.auth.tenant).select_related("model").order_by("name")
        return Response(s.CollectionSerializer(collections, many=True, context={"index_states": index_states()}).data)

    @extend_schema(request=s.CollectionCreateSerializer, responses={201: s.CollectionSerializer},
                   summary="Create a collection (its dimension measured with one embedding of its model)")
    def post(self, request: Request) -> Response:
        data = parse(s.CollectionCreateSerializer, request)
        collection, _ = services.create_collection(
            key=request.auth, name=data["name"], model=data["model"], dimension=data.get("dimension"),
            distance=data["distance"], metadata_schema=data["metadata_schema"], request_id=request.request_id,
        )
        return Response(s.CollectionSerializer(collection).data, status=status.HTTP_201_CREATED)


class CollectionDetailView(CollectionScoped):
    @extend_schema(parameters=[REF], responses=s.CollectionSerializer, summary="One collection")
    def get(self, request: Request, ref: str) -> Response:
        return Response(s.CollectionSerializer(self.collection(request, ref)).data)

    @extend_schema(parameters=[REF], responses={200: OpenApiTypes.OBJECT}, summary="Delete a collection with its documents")
    def delete(self, request: Request, ref: str) -> Response:
        collection = self.collection(request, ref)
        deleted = services.delete_collection(collection=collection)
        return Response({"id": str(collection.pk), "name": collection.name, "deleted": True, "documents_deleted": deleted})


class DocumentsView(CollectionScoped):
    @extend_schema(parameters=[REF], request=s.UpsertSerializer, responses={200: OpenApiTypes.OBJECT},
                   summary="Insert or update documents by id; unchanged texts are not embedded again")
    def post(self, request: Request, ref: str) -> Response:
        collection = self.collection(request, ref)
        data = parse(s.UpsertSerializer, request, collection)
        result = services.upsert_documents(
            key=request.auth, collection=collection, documents=[s.to_document(d) for d in data["documents"]],
            request_id=request.request_id,
        )
        return Response({
            "inserted": result.inserted, "updated": result.updated, "unchanged": result.unchanged,
            "embedded": result.embedded, "request_id": request.request_id,
            "inferences": [meta(routed) for routed in result.routed],
        })


class DocumentsDeleteView(CollectionScoped):
    @extend_schema(parameters=[REF], request=s.DeleteDocumentsSerializer, responses={200: OpenApiTypes.OBJECT},
                   summary="Delete documents by ids or by metadata filter")
    def post(self, request: Request, ref: str) -> Response:
        collection = self.collection(request, ref)
        data = parse(s.DeleteDocumentsSerializer, request, collection)
        deleted = services.delete_documents(collection=collection, ids=data.get("ids"), where=data.get("filter", NO_FILTER))
        return Response({"deleted": deleted})


class DocumentDetailView(CollectionScoped):
    @extend_schema(
        parameters=[REF, OpenApiParameter("include_vector", OpenApiTypes.BOOL, description="Also return the stored vector.")],
        responses=s.DocumentOutSerializer, summary="One document by its id",
    )
    def get(self, request: Request, ref: str, external_id: str) -> Response:
        collection = self.collection(request, ref)
        with_vector = request.query_params.get("include_vector", "").lower() in ("1", "true", "yes")
        document = services.get_document(collection=collection, external_id=external_id, with_vector=with_vector)
        body = s.DocumentOutSerializer(document).data
        if with_vector:
            body["vector"] = [float(x) for x in document.embedding]
        return Response(body)

    @extend_schema(parameters=[REF], responses={200: OpenApiTypes.OBJECT}, summary="Delete one document")
    def delete(self, request: Request, ref: str, external_id: str) -> Response:
        collection = self.collection(request, ref)
        if not services.delete_documents(collection=collection, ids=[external_id]):
            raise NotFound(f"No document {external_id!r} in this collection.")
        return Response({"deleted": 1})


class SearchView(CollectionScoped):
    @extend_schema(parameters=[REF], request=s.SearchSerializer, responses={200: OpenApiTypes.OBJECT},
                   summary="Nearest documents to a query text or vector: filters, hybrid keyword search, rerank")
    def post(self, request: Request, ref: str) -> Response:
        collection = services.collection_of(tenant=request.auth.tenant, ref=ref, recent=True)
        data = parse(s.SearchSerializer, request, collection)
        query = search.SearchQuery(
            k=data["k"], text=data.get("query"), vector=data.get("vector"), filter=data.get("filter", NO_FILTER),
            ef_search=data.get("ef_search"), hybrid=data["hybrid"], rerank=data["rerank"],
            rerank_model=data["rerank_model"], candidates=data.get("candidates"), exact=data["exact"],
        )
        outcome = search.search_collection(key=request.auth, collection=collection, query=query, request_id=request.request_id)
        results = [
            {"id": hit.id, "score": round(hit.score, 6), "distance": None if hit.distance is None else round(hit.distance, 6),
             "text": hit.text, "metadata": hit.metadata, "vector_rank": hit.vector_rank, "keyword_rank": hit.keyword_rank,
             "rerank_score": None if hit.rerank_score is None else round(hit.rerank_score, 6)}
            for hit in outcome.hits
        ]
        record = outcome.record
        return Response({
            "results": results, "request_id": request.request_id, "search_id": str(record.pk), "mode": record.mode,
            "latency_ms": round(record.latency_ms, 2),
            "inferences": {name: meta(routed) if routed else None
                           for name, routed in (("embedding", outcome.embedding), ("rerank", outcome.rerank))},
        })


class JobsView(CollectionScoped):
    @extend_schema(parameters=[REF], responses=s.JobSerializer(many=True), summary="The collection's ingestion jobs, newest first")
    def get(self, request: Request, ref: str) -> Response:
        collection = self.collection(request, ref)
        jobs = IngestionJob.objects.filter(collection=collection, tenant=request.auth.tenant).defer("source")[:100]
        return Response(s.JobSerializer(jobs, many=True).data)

    @extend_schema(
        parameters=[REF],
        request={"multipart/form-data": s.JobCreateSerializer, "application/json": s.JobCreateSerializer},
        responses={202: s.JobSerializer}, summary="Ingest a JSONL/CSV file or a large JSON body in the background",
    )
    def post(self, request: Request, ref: str) -> Response:
        collection = self.collection(request, ref)
        data = parse(s.JobCreateSerializer, request, collection)
        job = ingestion.create_job(key=request.auth, collection=collection, data=data["data"], fmt=data["format"],
                                   source_name=data["source_name"], request_id=request.request_id)
        return Response(s.JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobScoped(APIView):
    required_scope = Scope.COLLECTIONS

    def job(self, request: Request, pk: Any) -> IngestionJob:
        job = IngestionJob.objects.filter(pk=pk, tenant=request.auth.tenant).defer("source").first()
        if job is None:
            raise NotFound(f"No job {pk}.")
        return job


class JobDetailView(JobScoped):
    @extend_schema(responses=s.JobSerializer, summary="An ingestion job's progress: done/total and errors per line")
    def get(self, request: Request, pk: Any) -> Response:
        return Response(s.JobSerializer(self.job(request, pk)).data)


class JobResumeView(JobScoped):
    @extend_schema(request=None, responses=s.JobSerializer, summary="Resume a failed or cancelled job after its last chunk")
    def post(self, request: Request, pk: Any) -> Response:
        return Response(s.JobSerializer(ingestion.resume_job(job=self.job(request, pk))).data)


class JobCancelView(JobScoped):
    @extend_schema(request=None, responses=s.JobSerializer, summary="Cancel a job (documents already written stay)")
    def post(self, request: Request, pk: Any) -> Response:
        return Response(s.JobSerializer(ingestion.cancel_job(job=self.job(request, pk))).data)
