"""API keys and tenant isolation: every /v1 route needs a key; tenants see only their jobs."""

import logging

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from app.api.main import create_app
from app.core.settings import Settings
from app.core.tenants import ApiKeys
from tests.api.conftest import ALICE, BOB, assert_problem


def test_every_v1_route_needs_a_valid_key(locked: TestClient) -> None:
    job_id = locked.post("/v1/jobs", json={"prompt": "a"}, headers=ALICE).json()["id"]
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YTpi"}):
        for method, path in [
            ("POST", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job_id}"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("GET", f"/v1/jobs/{job_id}/images/0"),
            ("GET", "/v1/models"),
        ]:
            response = locked.request(method, path, json={"prompt": "a"}, headers=headers)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert locked.get(path).status_code == 200


def test_a_tenant_sees_only_its_own_jobs(locked: TestClient) -> None:
    job_id = locked.post("/v1/jobs", json={"prompt": "a"}, headers=ALICE).json()["id"]
    assert locked.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 200
    # Another tenant cannot tell the job exists: 404, exactly as for an unknown id.
    unknown = locked.get("/v1/jobs/j_01H00000000000000000000000", headers=BOB).json()
    for response in (
        locked.get(f"/v1/jobs/{job_id}", headers=BOB),
        locked.post(f"/v1/jobs/{job_id}/cancel", headers=BOB),
        locked.get(f"/v1/jobs/{job_id}/images/0", headers=BOB),
    ):
        body = assert_problem(response, 404)
        assert body["title"] == unknown["title"]
    assert locked.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["status"] == "queued"
    assert locked.get("/v1/models", headers=BOB).status_code == 200


def test_open_service_warns_loudly_once(
    settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as client:
        assert client.post("/v1/jobs", json={"prompt": "a"}).status_code == 202
    warnings = [r for r in caplog.records if "LDM_API_KEYS is not set" in r.getMessage()]
    assert len(warnings) == 1


def test_keys_are_parsed_strictly_and_never_shown() -> None:
    keys = ApiKeys(SecretStr("a:k1,b:k2"))
    assert (keys.tenant_of("k1"), keys.tenant_of("k2"), keys.tenant_of("k3")) == ("a", "b", None)
    assert ApiKeys(None).open and not keys.open
    for bad in ("a", "a:", ":k", "a:k1,b"):
        with pytest.raises(ValueError, match="tenant:key"):
            ApiKeys(SecretStr(bad))
    settings = Settings(api_keys="alice:super-secret")
    assert "super-secret" not in repr(settings) and "super-secret" not in str(settings.model_dump())
