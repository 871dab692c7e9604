"""The OpenAPI schema and its docs page are public and describe the API."""
import pytest


@pytest.mark.django_db
def test_the_schema_describes_the_v1_api(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert "/v1/me" in schema["paths"]
    assert "/v1/keys/{prefix}" in schema["paths"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


@pytest.mark.django_db
def test_the_docs_page_loads_without_a_cdn(api):
    response = api.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "cdn.jsdelivr.net" not in html
