"""The OpenAPI schema and its docs page are public and describe the API."""
import pytest


@pytest.mark.django_db
def test_the_schema_describes_the_v1_api(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert "/v1/me" in schema["paths"]
    assert "/v1/keys/{prefix}" in schema["paths"]
    for path in ["/v1/translate", "/v1/detect-language", "/v1/classify", "/v1/embeddings", "/v1/rerank",
                 "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/intent", "/v1/models",
                 "/v1/inferences/{id}", "/v1/feedback"]:
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


@pytest.mark.django_db
def test_the_docs_page_loads_without_a_cdn(api):
    response = api.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "cdn.jsdelivr.net" not in html


def test_the_schema_validates_without_warnings():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(root / "manage.py"), "spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
