"""The API's /metrics: this replica's HTTP figures and the cluster's, read from a real Redis."""

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from app.api.main import create_app
from app.core.settings import Settings
from app.core.stats import FINISHED_KEY
from app.core.workers import WorkerRegistry
from scripts.procs import free_port

CLUSTER = {
    "ldm_queue_depth",
    "ldm_jobs_running",
    "ldm_queue_oldest_age_seconds",
    "ldm_live_workers",
    "ldm_jobs_finished_total",
}


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def tiny(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(({"model": "tiny-sd"} | labels).items()))


def test_cluster_figures_follow_redis(client: TestClient, redis: Redis) -> None:
    assert scrape(client)[tiny("ldm_queue_depth")] == 0
    for _ in range(2):
        assert client.post("/v1/jobs", json={"prompt": "a"}).status_code == 202
    WorkerRegistry(redis).beat("tiny-sd", "w1")
    redis.hincrby(FINISHED_KEY, "tiny-sd|succeeded", 3)
    redis.hincrby(FINISHED_KEY, "tiny-sd|canceled", 1)
    samples = scrape(client)
    assert samples[("ldm_redis_up", ())] == 1
    assert samples[tiny("ldm_queue_depth")] == 2
    assert samples[tiny("ldm_jobs_running")] == 0
    assert 0 <= samples[tiny("ldm_queue_oldest_age_seconds")] < 60
    assert samples[tiny("ldm_live_workers")] == 1
    assert samples[tiny("ldm_jobs_finished_total", status="succeeded")] == 3
    assert samples[tiny("ldm_jobs_finished_total", status="canceled")] == 1
    assert samples[tiny("ldm_jobs_submitted_total")] == 2  # this replica's own count


def test_every_replica_reports_the_same_cluster_figures(
    client: TestClient, settings: Settings, redis: Redis
) -> None:
    client.post("/v1/jobs", json={"prompt": "a"})
    redis.hincrby(FINISHED_KEY, "tiny-sd|failed", 2)
    with TestClient(create_app(settings)) as other:
        mine, theirs = scrape(client), scrape(other)
    for key in [key for key in mine if key[0] in CLUSTER - {"ldm_queue_oldest_age_seconds"}]:
        assert mine[key] == theirs[key], key
    # Ages are on Redis' clock: two scrapes a moment apart agree within that moment.
    age = tiny("ldm_queue_oldest_age_seconds")
    assert abs(mine[age] - theirs[age]) < 5


def test_redis_down_leaves_cluster_figures_out_not_the_scrape(tmp_path: Path) -> None:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", storage_url=tmp_path.as_uri()
    )
    with TestClient(create_app(settings)) as client:
        client.get("/healthz")
        samples = scrape(client)
    assert samples[("ldm_redis_up", ())] == 0
    assert not {name for name, _ in samples} & CLUSTER  # absent, not a false zero
    assert any(name == "ldm_http_requests_total" for name, _ in samples)
