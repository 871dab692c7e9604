"""Large ingestion as a background job: a JSONL or CSV upload (or a big JSON body) is stored with the
job, then upserted a chunk at a time. Each chunk's documents and the job's progress commit in one
transaction, so a job that stops — a failure, a killed worker, a cancel — resumes after its last
committed chunk, and a chunk replayed by a duplicated task finds its progress moved and writes nothing.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import ApiError
from core.logs import current_request_id
from core.parsers import bounded_int, escape_unsafe, text_problem
from embeddings.models import Collection, IngestionJob
from embeddings.services import Conflict, DocumentInput, UpsertResult, upsert_documents
from routing.router import InputRejected
from tenants.models import ApiKey

logger = logging.getLogger("modelgate.embeddings")

MAX_STORED_ERRORS = 1000
CSV_RESERVED = ("id", "text", "metadata", "vector")


class JobInterrupted(Exception):
    """The job was cancelled, or another worker took it over, while this one worked on a chunk."""


class InvalidSource(ApiError):
    default_code = "invalid_request"


# --- sources ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceRecord:
    line: int  # where the record starts in the file (JSON bodies: its 1-based position)
    fields: dict[str, Any] | None
    problem: str | None = None


def inspect_source(data: bytes, fmt: str) -> int:
    """Check that the upload can be read at all and count its records; per-record problems are
    reported by the job, line by line."""
    total = len(Source(data, fmt).raw)
    if total == 0:
        raise InvalidSource("file: There are no documents in the file.")
    return total


class Source:
    """A job's upload split into raw records once (a task reads it once, not once per chunk);
    each record is parsed when its chunk comes."""

    def __init__(self, data: bytes, fmt: str):
        text = _decode(data)
        self.csv = fmt == IngestionJob.Format.CSV
        if self.csv:
            reader = csv.reader(io.StringIO(text, newline=""))
            self.names = [name.strip() for name in next(reader, [])]
            if not self.names:
                raise InvalidSource("file: The CSV file is empty.")
            if "id" not in self.names or not ({"text", "vector"} & set(self.names)):
                raise InvalidSource("file: The CSV header needs an id column and a text (or vector) column.")
            if len(set(self.names)) != len(self.names):
                raise InvalidSource("file: The CSV header names a column twice.")
            self.raw: list[tuple[int, Any]] = []
            try:
                while True:
                    line = reader.line_num + 1
                    row = next(reader, None)
                    if row is None:
                        break
                    if any(cell.strip() for cell in row):
                        self.raw.append((line, row))
            except csv.Error as exc:
                raise InvalidSource(f"file: The CSV file cannot be read: {exc}.") from None
        else:
            # "\n" only: splitlines() would also cut at U+2028 and other separators JSON strings may hold.
            self.raw = [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]

    def records(self, start: int, stop: int) -> Iterator[SourceRecord]:
        """Records start..stop-1, counting from 0 (blank lines are not records)."""
        for line, raw in self.raw[start:stop]:
            yield self._csv_record(line, raw) if self.csv else _json_record(line, raw)

    def _csv_record(self, line: int, row: list[str]) -> SourceRecord:
        if len(row) != len(self.names):
            return SourceRecord(line, None, f"{len(row)} cells for {len(self.names)} columns.")
        return _csv_record(line, dict(zip(self.names, row)))


def _json_record(line: int, raw: str) -> SourceRecord:
    try:
        fields = json.loads(raw, parse_constant=_reject_constant, parse_int=bounded_int)
    except ValueError as exc:
        return SourceRecord(line, None, f"Not valid JSON: {exc}.")
    except RecursionError:
        return SourceRecord(line, None, f"Nested deeper than {settings.MODELGATE_MAX_JSON_DEPTH} levels.")
    if not isinstance(fields, dict):
        return SourceRecord(line, None, "Each line must be a JSON object.")
    return SourceRecord(line, fields)


def _csv_record(line: int, row: dict[str, str]) -> SourceRecord:
    """id and text as they are; metadata and vector as JSON; any other column is a metadata field
    (typed by the collection's metadata schema, when it has one, by the serializer)."""
    fields: dict[str, Any] = {"id": row["id"], "text": row.get("text", "")}
    metadata: dict[str, Any] = {}
    for name in ("metadata", "vector"):
        raw = row.get(name, "").strip()
        if raw:
            try:
                value = json.loads(raw, parse_constant=_reject_constant, parse_int=bounded_int)
            except (ValueError, RecursionError):
                return SourceRecord(line, None, f"The {name} cell is not valid JSON.")
            if name == "metadata":
                if not isinstance(value, dict):
                    return SourceRecord(line, None, "The metadata cell must hold a JSON object.")
                metadata.update(value)
            else:
                fields["vector"] = value
    metadata.update({name: value for name, value in row.items() if name not in CSV_RESERVED and value != ""})
    fields["metadata"] = metadata
    fields["csv"] = True
    return SourceRecord(line, fields)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidSource(f"file: The file is not UTF-8 text (byte {exc.start}).") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


# --- jobs -------------------------------------------------------------------------------------
def create_job(*, key: ApiKey, collection: Collection, data: bytes, fmt: str, source_name: str, request_id: str) -> IngestionJob:
    total = inspect_source(data, fmt)
    job = IngestionJob.objects.create(
        tenant_id=collection.tenant_id, collection=collection, api_key=key, request_id=request_id, format=fmt,
        source_name=source_name[:255], source=data, total=total,
    )
    enqueue(job)
    return job


def enqueue(job: IngestionJob) -> None:
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task("embeddings.tasks.run_ingestion", str(job.pk), task_name=f"ingest {job.pk}"))


def resume_job(*, job: IngestionJob) -> IngestionJob:
    """Queue a failed or cancelled job again: it goes on after its last committed chunk."""
    resumable = [IngestionJob.Status.FAILED, IngestionJob.Status.CANCELLED]
    if not IngestionJob.objects.filter(pk=job.pk, status__in=resumable).update(
        status=IngestionJob.Status.QUEUED, error_code="", error_message="", lease_until=None, finished_at=None,
        updated_at=timezone.now(),
    ):
        job.refresh_from_db()
        raise Conflict(f"Only failed or cancelled jobs can be resumed; this one is {job.status}.", code="job_not_resumable")
    enqueue(job)
    job.refresh_from_db()
    return job


def cancel_job(*, job: IngestionJob) -> IngestionJob:
    """Stop a queued or running job after its current chunk (whose writes are then rolled back)."""
    IngestionJob.objects.filter(pk=job.pk, status__in=[IngestionJob.Status.QUEUED, IngestionJob.Status.RUNNING]).update(
        status=IngestionJob.Status.CANCELLED, lease_until=None, finished_at=timezone.now(), updated_at=timezone.now()
    )
    job.refresh_from_db()
    return job


def lease_seconds() -> int:
    return int(settings.Q_CLUSTER["timeout"]) + 60


def claim(job_id: str) -> IngestionJob | None:
    """Take the job for this worker, or None when it is finished, cancelled, or held by a live worker.
    The conditional update is the claim: of two workers handed the same job, one gets 1 row."""
    now = timezone.now()
    claimed = (
        IngestionJob.objects.filter(pk=job_id, status__in=[IngestionJob.Status.QUEUED, IngestionJob.Status.RUNNING])
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(status=IngestionJob.Status.RUNNING, lease_until=now + timedelta(seconds=lease_seconds()),
                attempts=F("attempts") + 1, updated_at=now)
    )
    if not claimed:
        return None
    job = IngestionJob.objects.select_related("collection__model", "collection__tenant", "api_key__tenant").get(pk=job_id)
    if job.started_at is None:
        IngestionJob.objects.filter(pk=job.pk, started_at__isnull=True).update(started_at=now)
    return job


def run_job(job_id: str, *, seconds: float | None = None) -> str:
    """Work on a job chunk after chunk; once `seconds` (half the task timeout by default) have passed,
    hand the rest to a fresh task, so that no task outlives django-q2's timeout however large the job."""
    job = claim(job_id)
    if job is None:
        return "not claimed"
    token = current_request_id.set(job.request_id)
    deadline = time.monotonic() + (seconds if seconds is not None else settings.Q_CLUSTER["timeout"] / 2)
    try:
        _check_key(job)
        source = Source(bytes(job.source), job.format)
        while job.done < job.total:
            process_chunk(job, source)
            if job.done < job.total and time.monotonic() > deadline:
                _release(job)
                enqueue(job)
                return "continues in a new task"
        _finish(job)
        return "done"
    except JobInterrupted:
        return "interrupted"
    except ApiError as exc:
        _fail(job, exc.error_code, str(exc.detail))
        return f"failed: {exc.error_code}"
    except Exception:
        # What went wrong on our side stays in our logs: a tenant's job record may show SQL or paths otherwise.
        logger.exception("ingestion job stopped on an internal error", extra={"job": str(job.pk)})
        _fail(job, "internal_error", f"The job stopped on an error on our side after {job.done} of {job.total} records; "
                                     f"operators can find it in the logs by job id {job.pk} (request {job.request_id}). "
                                     "Resuming the job retries from there.")
        raise
    finally:
        current_request_id.reset(token)


def process_chunk(job: IngestionJob, source: Source | None = None) -> None:
    """Upsert the next chunk and advance the job, in one transaction."""
    start = job.done
    stop = min(job.total, start + settings.MODELGATE_INGEST_CHUNK_DOCUMENTS)
    source = source or Source(bytes(job.source), job.format)
    documents, errors = parse_chunk(job, source.records(start, stop))

    def advance(result: UpsertResult) -> None:
        now = timezone.now()
        kept = (job.errors + errors)[:MAX_STORED_ERRORS]
        moved = IngestionJob.objects.filter(pk=job.pk, status=IngestionJob.Status.RUNNING, done=start).update(
            done=stop, inserted=F("inserted") + result.inserted, updated=F("updated") + result.updated,
            unchanged=F("unchanged") + result.unchanged, embedded=F("embedded") + result.embedded,
            error_count=F("error_count") + len(errors), errors=kept,
            lease_until=now + timedelta(seconds=lease_seconds()), updated_at=now,
        )
        if not moved:
            raise JobInterrupted()
        job.done, job.errors = stop, kept

    if not documents:
        with transaction.atomic():
            advance(UpsertResult())
        return
    try:
        upsert_documents(key=job.api_key, collection=job.collection, documents=[d for _, d in documents],
                         request_id=job.request_id, within=advance)
    except InputRejected:
        # The model refused some text of the chunk: find which, one document at a time. Each of
        # these upserts is idempotent, so a crash before the progress commits costs no duplicate.
        total = UpsertResult()
        for line, document in documents:
            try:
                result = upsert_documents(key=job.api_key, collection=job.collection, documents=[document],
                                          request_id=job.request_id)
            except InputRejected as exc:
                errors.append({"line": line, "id": document.id, "message": f"The model refused the text: {exc.detail}"})
                continue
            total.inserted += result.inserted
            total.updated += result.updated
            total.unchanged += result.unchanged
            total.embedded += result.embedded
        errors.sort(key=lambda error: error["line"])
        with transaction.atomic():
            advance(total)


def parse_chunk(
    job: IngestionJob, records: Iterator[SourceRecord]
) -> tuple[list[tuple[int, DocumentInput]], list[dict[str, Any]]]:
    """(line, document) for each record of a chunk, and an error for each record that is not one.
    An id repeated within the chunk keeps its last line (as it would across chunks)."""
    from embeddings.serializers import document_from_record

    by_id: dict[str, tuple[int, DocumentInput]] = {}
    errors: list[dict[str, Any]] = []
    for record in records:
        if record.problem is not None:
            errors.append({"line": record.line, "message": record.problem})
            continue
        # A NUL or a lone surrogate anywhere in a record (a JSON \u escape, a CSV cell) cannot be stored:
        # the record is skipped and listed, and the id it is listed under is written escaped.
        unsafe = text_problem(record.fields, max_depth=settings.MODELGATE_MAX_JSON_DEPTH)
        document, problem = (None, str(unsafe)) if unsafe else document_from_record(record.fields, collection=job.collection)
        if problem is not None:
            errors.append({"line": record.line, "id": escape_unsafe(str(record.fields.get("id", "")))[:256], "message": problem})
            continue
        if document.id in by_id:
            earlier = by_id[document.id][0]
            errors.append({"line": earlier, "id": document.id, "message": f"Superseded by line {record.line} (same id)."})
        by_id[document.id] = (record.line, document)
    return list(by_id.values()), errors


def _check_key(job: IngestionJob) -> None:
    """The job acts with the key that started it: a key revoked or expired since stops the job."""
    key = job.api_key
    if key is None or key.is_revoked or key.is_expired() or not key.tenant.is_active:
        raise ApiError("The API key that started this job can no longer be used.", code="key_unusable")


def _release(job: IngestionJob) -> None:
    IngestionJob.objects.filter(pk=job.pk, status=IngestionJob.Status.RUNNING).update(
        status=IngestionJob.Status.QUEUED, lease_until=None, updated_at=timezone.now()
    )


def _finish(job: IngestionJob) -> None:
    now = timezone.now()
    IngestionJob.objects.filter(pk=job.pk, status=IngestionJob.Status.RUNNING).update(
        status=IngestionJob.Status.DONE, lease_until=None, finished_at=now, updated_at=now
    )


def _fail(job: IngestionJob, code: str, message: str) -> None:
    now = timezone.now()
    IngestionJob.objects.filter(pk=job.pk, status=IngestionJob.Status.RUNNING).update(
        status=IngestionJob.Status.FAILED, error_code=code[:64], error_message=message[:2000], lease_until=None,
        finished_at=now, updated_at=now,
    )
    logger.warning("ingestion job failed", extra={"job": str(job.pk), "code": code})


def stalled_jobs() -> list[str]:
    """Unfinished jobs nobody works on: a worker died (its lease ran out), or the queue lost the task."""
    now = timezone.now()
    quiet = now - timedelta(seconds=lease_seconds())
    return [
        str(pk) for pk in IngestionJob.objects.filter(
            status__in=[IngestionJob.Status.QUEUED, IngestionJob.Status.RUNNING], updated_at__lt=quiet
        ).filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now)).values_list("pk", flat=True)[:100]
    ]
