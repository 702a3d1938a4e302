"""The exact-result cache and per-tenant usage through the API, with the worker's part played
by hand (the same calls a worker makes: app/core/store.py, worker/billing.py)."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from app.api.main import create_app
from app.core.jobs import ImageInfo, image_url
from app.core.result_cache import ResultCache
from app.core.settings import Settings
from app.core.storage import image_key
from app.core.usage import Counts, Usage, today
from tests.api.conftest import assert_problem
from worker.billing import Billing

KEYS = "acme:key-a,globex:key-g"
A = {"Authorization": "Bearer key-a"}
G = {"Authorization": "Bearer key-g"}
BODY = {"prompt": "a red circle", "seed": 7, "num_inference_steps": 4}


def make_client(settings: Settings, **changes: object) -> TestClient:
    changes = {"api_keys": SecretStr(KEYS), **changes}
    return TestClient(create_app(settings.model_copy(update=changes)))


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    with make_client(settings) as client:
        yield client


def publish_weights(client: TestClient, version: str = "v1") -> Billing:
    """A worker has started: its weights' version is published."""
    services = client.app.state.services
    billing = Billing(services.usage, services.cache, "tiny-sd", version)
    billing.publish()
    return billing


def run_as_worker(client: TestClient, billing: Billing, job_id: str, data: bytes) -> None:
    """What a worker does with a job: start it, store its image, succeed, book it."""
    services = client.app.state.services
    assert services.store.start(job_id, 4, worker="w1")
    services.storage.put(image_key(job_id, 0, "png", attempt=1), data, "image/png")
    info = ImageInfo(
        url=image_url(job_id, 0), width=64, height=64, seed=7, content_type="image/png"
    )
    assert services.store.succeed(job_id, [info], "w1", attempt=1)
    billing.ended(job_id, Counts(images=1, steps=4, worker_seconds=0.25))


def test_an_identical_job_is_answered_from_the_first_ones_images(client: TestClient) -> None:
    billing = publish_weights(client)
    first = client.post("/v1/jobs", json=BODY, headers=A).json()
    assert first["status"] == "queued" and first["cached"] is False
    run_as_worker(client, billing, first["id"], b"png-bytes")
    queue = client.app.state.services.queue
    depth = queue.depth("tiny-sd")

    response = client.post("/v1/jobs", json={**BODY, "priority": "low"}, headers=A)
    assert response.status_code == 202
    again = response.json()
    assert again["id"] != first["id"]
    assert again["status"] == "succeeded" and again["cached"] is True
    assert again["images"][0]["url"] == f"/v1/jobs/{again['id']}/images/0"
    assert again["images"][0]["seed"] == 7 and again["request"]["priority"] == "low"
    assert client.get(f"/v1/jobs/{again['id']}", headers=A).json() == again
    image = client.get(again["images"][0]["url"], headers=A)
    assert image.status_code == 200 and image.content == b"png-bytes"
    # Nothing was queued for it: no worker will ever see it.
    assert queue.depth("tiny-sd") == depth


def test_what_changes_the_pixels_misses_the_cache(client: TestClient) -> None:
    billing = publish_weights(client)
    first = client.post("/v1/jobs", json=BODY, headers=A).json()
    run_as_worker(client, billing, first["id"], b"png-bytes")
    for change in (
        {"seed": 8},
        {"prompt": "a blue circle"},
        {"num_inference_steps": 5},
        {"output_format": "webp"},
        {"guidance_scale": 3.0},
        {"cache": False},  # the client opts out
    ):
        job = client.post("/v1/jobs", json={**BODY, **change}, headers=A).json()
        assert job["status"] == "queued" and job["cached"] is False, change


def test_other_weights_or_no_known_weights_miss(client: TestClient) -> None:
    # No worker has said which weights it runs: nothing can be cached.
    first = client.post("/v1/jobs", json=BODY, headers=A).json()
    run_as_worker(client, Billing(*_parts(client), None), first["id"], b"old")
    publish_weights(client, "v1")
    assert client.post("/v1/jobs", json=BODY, headers=A).json()["cached"] is False
    # A worker on new weights registers under them; the old entry is never found.
    second = client.post("/v1/jobs", json=BODY, headers=A).json()
    billing = publish_weights(client, "v2")
    run_as_worker(client, billing, second["id"], b"new")  # stamped v1, ran v2: not registered
    assert client.post("/v1/jobs", json=BODY, headers=A).json()["cached"] is False


def _parts(client: TestClient) -> tuple[Usage, ResultCache, str]:
    services = client.app.state.services
    return services.usage, services.cache, "tiny-sd"


def test_tenants_do_not_share_results_unless_the_operator_allows(
    settings: Settings, redis: Redis
) -> None:
    with make_client(settings) as client:
        billing = publish_weights(client)
        first = client.post("/v1/jobs", json=BODY, headers=A).json()
        run_as_worker(client, billing, first["id"], b"png-bytes")
        assert client.post("/v1/jobs", json=BODY, headers=G).json()["cached"] is False
    redis.flushdb()
    with make_client(settings, cache_shared=True) as client:
        billing = publish_weights(client)
        first = client.post("/v1/jobs", json=BODY, headers=A).json()
        run_as_worker(client, billing, first["id"], b"png-bytes")
        theirs = client.post("/v1/jobs", json=BODY, headers=G).json()
        assert theirs["cached"] is True
        assert client.get(theirs["images"][0]["url"], headers=G).content == b"png-bytes"
        # Their own job, not a window onto acme's.
        assert_problem(client.get(f"/v1/jobs/{theirs['id']}", headers=A), 404)


def test_the_operator_can_turn_the_cache_off(settings: Settings, redis: Redis) -> None:
    with make_client(settings, result_cache=False) as client:
        billing = publish_weights(client)
        first = client.post("/v1/jobs", json=BODY, headers=A).json()
        run_as_worker(client, billing, first["id"], b"png-bytes")
        assert client.post("/v1/jobs", json=BODY, headers=A).json()["cached"] is False


def test_a_hit_keeps_the_served_files_alive(client: TestClient, redis: Redis) -> None:
    billing = publish_weights(client)
    first = client.post("/v1/jobs", json=BODY, headers=A).json()
    run_as_worker(client, billing, first["id"], b"png-bytes")
    redis.expire(f"ldm:job:{first['id']}", 5)  # nearly expired
    again = client.post("/v1/jobs", json=BODY, headers=A).json()
    assert again["cached"] is True
    ttl = client.app.state.services.store.result_ttl
    # The job whose files it serves lives (and is booked for the sweep) as long as it does.
    assert redis.ttl(f"ldm:job:{first['id']}") > ttl - 5
    expiry = redis.zscore("ldm:expiry", first["id"])
    assert expiry >= redis.zscore("ldm:expiry", again["id"]) - 1


def test_an_idempotent_retry_of_a_cached_job_returns_it(client: TestClient) -> None:
    billing = publish_weights(client)
    first = client.post("/v1/jobs", json=BODY, headers=A).json()
    run_as_worker(client, billing, first["id"], b"png-bytes")
    headers = {**A, "Idempotency-Key": "k1"}
    again = client.post("/v1/jobs", json=BODY, headers=headers)
    retry = client.post("/v1/jobs", json=BODY, headers=headers)
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["id"] == again.json()["id"] and retry.json()["cached"] is True


def test_usage_counts_run_and_cached_jobs_for_their_tenant_only(client: TestClient) -> None:
    billing = publish_weights(client)
    first = client.post("/v1/jobs", json=BODY, headers=A).json()
    run_as_worker(client, billing, first["id"], b"png-bytes")
    billing.ended(first["id"], Counts(images=1, steps=4, worker_seconds=0.25))  # once only
    client.post("/v1/jobs", json=BODY, headers=A)  # cached

    report = client.get("/v1/usage", headers=A).json()
    assert report["tenant"] == "acme" and report["end"] == today().isoformat()
    assert report["days"] == [
        {
            "day": today().isoformat(),
            "model": "tiny-sd",
            "jobs": 2,
            "images": 2,
            "steps": 4,
            "worker_seconds": 0.25,
            "cached_jobs": 1,
        }
    ]
    assert report["total"]["jobs"] == 2 and report["total"]["worker_seconds"] == 0.25
    theirs = client.get("/v1/usage", headers=G).json()
    assert theirs["tenant"] == "globex" and theirs["days"] == []
    assert_problem(client.get("/v1/usage"), 401)

    metrics = client.get("/metrics").text
    assert 'ldm_usage_jobs_total{model="tiny-sd",tenant="acme"} 2.0' in metrics
    assert 'ldm_usage_cached_jobs_total{model="tiny-sd",tenant="acme"} 1.0' in metrics
    assert 'ldm_usage_worker_seconds_total{model="tiny-sd",tenant="acme"} 0.25' in metrics


def test_usage_ranges_are_checked(client: TestClient) -> None:
    day = today()
    later = (day + timedelta(days=1)).isoformat()
    assert_problem(client.get(f"/v1/usage?start={later}&end={day}", headers=A), 422)
    far = (day - timedelta(days=400)).isoformat()
    assert_problem(client.get(f"/v1/usage?start={far}", headers=A), 422)
    assert_problem(client.get("/v1/usage?start=yesterday", headers=A), 422)
    assert_problem(client.get("/v1/usage?start=2026-02-30", headers=A), 422)
    misspelt = assert_problem(client.get("/v1/usage?from=2026-01-01", headers=A), 422)
    assert misspelt["errors"][0]["field"] == "query.from"
    week = client.get(f"/v1/usage?start={(day - timedelta(days=6)).isoformat()}", headers=A)
    assert week.status_code == 200 and week.json()["days"] == []
