"""Background work for collections (django-q2): ingestion jobs, vector index builds, stalled-job recovery."""
from __future__ import annotations

import logging

from core.schedules import register_schedules
from embeddings import indexes, ingestion

logger = logging.getLogger("modelgate.embeddings")

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "embeddings: resume stalled ingestion jobs": ("embeddings.tasks.resume_stalled_jobs", "I", 5),
}


def run_ingestion(job_id: str) -> str:
    """Work on one ingestion job; safe to run twice at once (only one claims it) or again after a crash."""
    return ingestion.run_job(job_id)


def build_vector_index(dimension: int, distance: str) -> str:
    return indexes.build_index(int(dimension), distance)


def resume_stalled_jobs() -> int:
    """Hand jobs whose worker died, or whose task was lost, to a new task: it resumes after their
    last committed chunk."""
    from django_q.tasks import async_task

    stalled = ingestion.stalled_jobs()
    for job_id in stalled:
        async_task("embeddings.tasks.run_ingestion", job_id, task_name=f"ingest {job_id} (resumed)")
    if stalled:
        logger.warning("stalled ingestion jobs handed to new tasks", extra={"count": len(stalled)})
    return len(stalled)


def ensure_schedules(**kwargs: object) -> None:
    register_schedules(SCHEDULES)
