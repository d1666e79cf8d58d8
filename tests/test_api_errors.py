"""Every error under /v1/ is {"detail": "…"} (docs/api.md), also the ones no API handler produced."""

import pytest
from django.test import Client

from accounts.services import create_api_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_and_token(cast):
    _, token = create_api_token(user=cast.bob, tenant=cast.acme, name="test")
    return Client(raise_request_exception=False), {"HTTP_AUTHORIZATION": f"Bearer {token}"}, cast


def test_unknown_path_is_a_json_404(client_and_token):
    client, auth, _ = client_and_token
    response = client.get("/v1/no-such-thing", **auth)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "No such API endpoint: GET /v1/no-such-thing. The operations are listed at /v1/docs."}


def test_wrong_method_is_a_json_405_that_keeps_allow(client_and_token):
    client, auth, _ = client_and_token
    response = client.put("/v1/clusters", **auth)
    assert response.status_code == 405
    assert "GET" in response["Allow"]
    assert response.json()["detail"].startswith("PUT is not allowed on /v1/clusters; allowed: ")


def test_schema_errors_are_400_with_detail_not_422(client_and_token):
    client, auth, cast = client_and_token
    response = client.post(f"/v1/clusters/{cast.hpc.pk}/jobs", {"nodes": "many"}, content_type="application/json", **auth)
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "nodes" and body["detail"].startswith("nodes: ")
    response = client.get(f"/v1/clusters/{cast.hpc.pk}/jobs", {"limit": "lots"}, **auth)
    assert response.status_code == 400 and response.json()["detail"].startswith("limit: ")
    response = client.post(f"/v1/clusters/{cast.hpc.pk}/jobs", "{not json", content_type="application/json", **auth)
    assert response.status_code == 400 and isinstance(response.json()["detail"], str)


def test_an_unhandled_error_is_a_json_500_with_the_request_id(client_and_token, monkeypatch):
    client, auth, _ = client_and_token

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("jobs.api.pollstate.read", broken)
    response = client.get("/v1/clusters", **auth)
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert detail.startswith("Internal error") and response["X-Request-ID"] in detail
    assert "boom" not in detail  # nothing of the exception reaches the client


def test_html_pages_outside_the_api_stay_html(client_and_token):
    client, _, _ = client_and_token
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")
