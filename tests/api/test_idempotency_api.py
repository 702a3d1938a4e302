"""Idempotent submits: retries of the same request make one job, on any replica."""

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from app.api.main import create_app
from app.core.queue import rq_queue
from app.core.settings import Settings
from tests.api.conftest import assert_problem
from tests.api.test_jobs_api import png_b64

BODY = {"prompt": "a red circle", "seed": 7}


def post(client: TestClient, key: str, body: dict = BODY, **headers: str):
    return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key, **headers})


def jobs_in_redis(redis: Redis) -> int:
    # Job records only, not their event streams (`ldm:job:{id}:events`).
    return sum(1 for key in redis.keys("ldm:job:*") if key.count(b":") == 2)


def test_a_retry_returns_the_same_job(client: TestClient, redis: Redis) -> None:
    first = post(client, "order-1")
    again = post(client, "order-1")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert jobs_in_redis(redis) == 1 and rq_queue(redis, "tiny-sd").count == 1
    # Keys live as long as results do.
    ttl = client.app.state.services.settings.result_ttl
    (key,) = redis.keys("ldm:idem:*")
    assert 0 < redis.ttl(key) <= ttl
    # Without the key, the same body is a new job.
    assert client.post("/v1/jobs", json=BODY).json()["id"] != first.json()["id"]


def test_the_same_key_with_another_body_is_refused(client: TestClient, redis: Redis) -> None:
    post(client, "order-2")
    body = assert_problem(post(client, "order-2", BODY | {"seed": 8}), 422)
    assert body["errors"][0]["field"] == "header.Idempotency-Key"
    assert "different body" in body["errors"][0]["message"]
    assert jobs_in_redis(redis) == 1


def test_replays_leave_no_orphan_init_image(client: TestClient, redis: Redis) -> None:
    body = BODY | {"init_image": png_b64((64, 64))}
    job_id = post(client, "img-1", body).json()["id"]
    assert post(client, "img-1", body).json()["id"] == job_id
    root = client.app.state.services.storage.root
    assert [p.name for p in root.iterdir()] == [job_id]


def test_keys_belong_to_their_tenant(settings: Settings, redis: Redis) -> None:
    keys = SecretStr("alice:ka,bob:kb")
    with TestClient(create_app(settings.model_copy(update={"api_keys": keys}))) as client:
        alice = post(client, "same", Authorization="Bearer ka").json()["id"]
        bob = post(client, "same", Authorization="Bearer kb").json()["id"]
    assert alice != bob


@pytest.fixture
def replicas(settings: Settings, redis: Redis) -> Iterator[list[TestClient]]:
    clients = [TestClient(create_app(settings)) for _ in range(2)]
    for client in clients:
        client.__enter__()
    yield clients
    for client in clients:
        client.__exit__(None, None, None)


def test_concurrent_duplicates_across_replicas_make_one_job(
    replicas: list[TestClient], redis: Redis
) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def submit(client: TestClient) -> None:
        barrier.wait()
        response = post(client, "burst-1")
        assert response.status_code == 202
        results.append(response.json()["id"])

    threads = [threading.Thread(target=submit, args=(replicas[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert jobs_in_redis(redis) == 1 and rq_queue(redis, "tiny-sd").count == 1
