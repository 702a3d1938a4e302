"""Production shape on one machine: nginx round robin over two API processes, two workers,
S3-compatible storage over HTTP. Any replica answers for any job; no job runs twice."""

import io
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.core.workers import GONE_AFTER_S
from scripts.procs import wait_until
from scripts.stack import LocalStack
from tests.e2e.conftest import BEHIND_BUSY, BUSY, SLOW
from worker.tiny_model import ensure_tiny_model


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LocalStack]:
    ensure_tiny_model(model_cache)
    # One thread each: two workers share this machine's cores. Batching off: RQ's own job
    # count then proves no job ran twice (batched jobs bypass it; see test_micro_batching.py).
    env = {"OMP_NUM_THREADS": "1", "LDM_MAX_BATCH": "1"}
    with LocalStack(tmp_path_factory.mktemp("cluster"), model_cache, **env) as s:
        s.use_s3()
        s.start_api()
        s.start_api()
        s.start_balancer()
        s.start_worker()
        s.start_worker()
        yield s


def requests_served(client: httpx.Client) -> float:
    """Job polls this API process answered, from its own metrics."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ldm_http_requests_total") and 'route="/v1/jobs/{job_id}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def rq_jobs_run(cluster: LocalStack) -> int:
    """Jobs the workers have run, by RQ's own count."""
    return sum(w.successful_job_count + w.failed_job_count for w in cluster.live_workers())


def test_jobs_through_the_balancer_all_succeed_once(cluster: LocalStack) -> None:
    before = rq_jobs_run(cluster)
    jobs = [cluster.submit({"prompt": f"p{i}", "num_inference_steps": 6}) for i in range(12)]
    done = [cluster.wait(job["id"], timeout=120) for job in jobs]
    assert all(job["status"] == "succeeded" for job in done)
    # RQ counts a job just after the runner records it: wait for the count, then no more.
    wait_until(lambda: rq_jobs_run(cluster) - before >= 12, 10, "RQ's job count")
    assert rq_jobs_run(cluster) - before == 12  # no job taken twice
    # Each job ran on exactly one worker, and both workers took jobs.
    assert all(job["worker"] for job in done)
    assert len({job["worker"] for job in done}) == 2
    # Both API processes answered polls: round robin, no stickiness, no shared process state.
    assert all(requests_served(client) > 0 for _, client in cluster.apis)


def test_image_urls_resolve_through_the_balancer(cluster: LocalStack) -> None:
    job = cluster.wait(
        cluster.submit({"prompt": "a", "num_images": 2, "num_inference_steps": 4})["id"]
    )
    for index, info in enumerate(job["images"]):
        assert info["url"] == f"/v1/jobs/{job['id']}/images/{index}"
        redirect = cluster.http.get(info["url"])
        assert redirect.status_code == 307 and "X-Amz-Signature" in redirect.headers["location"]
        image = httpx.get(redirect.headers["location"])
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (64, 64)


def test_queue_positions_agree_across_replicas(cluster: LocalStack) -> None:
    busy = [cluster.submit(BUSY)["id"] for _ in range(2)]
    for job_id in busy:
        cluster.wait(job_id, {"running"})
    # Of BUSY's size: they wait behind it (a job of another size would join it at its next
    # step, and leave the queue while it is being polled).
    body = {"num_inference_steps": 2} | BEHIND_BUSY
    waiting = [cluster.submit(body | {"prompt": f"w{i}"})["id"] for i in range(3)]
    for _ in range(2):  # consecutive polls land on different replicas
        assert [cluster.job(j)["queue_position"] for j in waiting] == [0, 1, 2]
    for job_id in busy:
        cluster.http.post(f"/v1/jobs/{job_id}/cancel")
    assert all(cluster.wait(j, timeout=60)["status"] == "succeeded" for j in waiting)


def test_a_worker_killed_mid_job_is_forgotten_and_its_job_runs_again(cluster: LocalStack) -> None:
    def live() -> int:
        (model,) = cluster.http.get("/v1/models").json()["models"]
        return model["live_workers"]

    assert live() == 2
    job = cluster.submit(SLOW | {"num_inference_steps": 100})
    running = cluster.wait(job["id"], {"running"})
    # kill -9 the worker running it: no goodbye, only the missing heartbeats tell.
    (pid,) = [w.pid for w in cluster.live_workers() if w.name == running["worker"]]
    (victim,) = [p for p in cluster.workers if p.pid == pid]
    cluster.workers.remove(victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    done = cluster.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["worker"] != running["worker"]
    assert live() == 1  # the dead worker no longer counts
    # Picked up again within a minute of the kill (it then ran to the end on the survivor).
    restarted = datetime.fromisoformat(done["started_at"]).timestamp()
    assert restarted - (time.time() - (time.monotonic() - killed_at)) < 60
    assert GONE_AFTER_S < 60
