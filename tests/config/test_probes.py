"""/health and /ready answer without a key; /ready looks at the database, pgvector and migrations."""
import pytest


@pytest.mark.django_db
def test_health_says_the_process_is_alive(api):
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_ready_checks_database_pgvector_and_migrations(api):
    response = api.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "pgvector": "ok"},
    }


@pytest.mark.django_db
def test_ready_is_503_when_pgvector_is_missing(api):
    from django.db import connection

    with connection.cursor() as cursor:
        # CASCADE: the documents' vector column depends on the type.
        cursor.execute("DROP EXTENSION vector CASCADE")
    # The test transaction rolls the DROP back afterwards.
    response = api.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert "not installed" in response.json()["checks"]["pgvector"]


@pytest.mark.django_db
def test_the_index_points_at_docs_and_admin(api):
    body = api.get("/").json()
    assert body["docs"] == "/api/docs/" and body["admin"] == "/admin/"
