"""Tenant policy at the door: who may ask for which priority, how many jobs a tenant may
have waiting, and queue positions that follow the policy's order."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from app.api.main import create_app
from app.core.policy import TenantPolicy
from app.core.settings import Settings
from tests.api.conftest import assert_problem

ALICE = {"Authorization": "Bearer alice-key-0123"}
BOB = {"Authorization": "Bearer bob-key-4567"}


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    policies = {
        "alice": TenantPolicy(weight=2, max_queued=3),
        "*": TenantPolicy(max_priority="normal"),
    }
    keys = SecretStr("alice:alice-key-0123, bob:bob-key-4567")
    settings = settings.model_copy(update={"api_keys": keys, "tenants": policies})
    with TestClient(create_app(settings)) as client:
        yield client


def test_priority_beyond_the_tenants_highest_is_a_422(client: TestClient) -> None:
    body = assert_problem(
        client.post("/v1/jobs", json={"prompt": "a", "priority": "high"}, headers=BOB), 422
    )
    assert body["errors"][0]["field"] == "body.priority"
    assert "normal" in body["errors"][0]["message"]
    job = client.post("/v1/jobs", json={"prompt": "a", "priority": "low"}, headers=BOB).json()
    assert job["request"]["priority"] == "low"
    high = client.post("/v1/jobs", json={"prompt": "a", "priority": "high"}, headers=ALICE)
    assert high.status_code == 202 and high.json()["queue_position"] == 0
    bad = client.post("/v1/jobs", json={"prompt": "a", "priority": "urgent"}, headers=ALICE)
    assert assert_problem(bad, 422)["errors"][0]["field"] == "body.priority"


def test_past_its_queued_cap_a_tenant_gets_429_and_others_go_on(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json={"prompt": "a"}, headers=ALICE).json()["id"] for _ in "abc"]
    over = client.post("/v1/jobs", json={"prompt": "a"}, headers=ALICE)
    body = assert_problem(over, 429)
    assert "3 of your jobs are waiting" in body["detail"]
    assert int(over.headers["retry-after"]) >= 1
    assert client.post("/v1/jobs", json={"prompt": "a"}, headers=BOB).status_code == 202
    # Room again once one of them leaves the line.
    assert client.post(f"/v1/jobs/{ids[0]}/cancel", headers=ALICE).status_code == 202
    assert client.post("/v1/jobs", json={"prompt": "a"}, headers=ALICE).status_code == 202


def test_queue_positions_follow_fair_share(client: TestClient) -> None:
    def post(headers: dict, **fields) -> dict:
        return client.post("/v1/jobs", json={"prompt": "a"} | fields, headers=headers).json()

    bob = [post(BOB) for _ in range(4)]
    alice = post(ALICE)
    # alice's weight is 2: her job goes ahead of all but bob's first, whose tag is the same.
    assert alice["queue_position"] == 1
    polled = client.get(f"/v1/jobs/{bob[3]['id']}", headers=BOB).json()
    assert polled["queue_position"] == 4 and polled["paused"] is False
