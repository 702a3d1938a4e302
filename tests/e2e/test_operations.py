"""Operations, with real processes: the API's and a worker's /metrics move as jobs run, the
Grafana dashboard queries only metrics that are exported, and rq-dashboard reads our queues."""

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from scripts.procs import free_port, port_open, stop, wait_until
from scripts.stack import LocalStack
from tests.e2e.conftest import BEHIND_BUSY, BUSY
from worker.metrics import GpuMemory
from worker.tiny_model import ensure_tiny_model

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ldm-serve.json"
Samples = dict[tuple[str, tuple], float]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """Where the worker serves its metrics."""
    return free_port()


@pytest.fixture(scope="module")
def ops(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, metrics_port: int
) -> Iterator[LocalStack]:
    """An API and a worker that serves its metrics (LDM_WORKER_METRICS_PORT)."""
    ensure_tiny_model(model_cache)
    with LocalStack(tmp_path_factory.mktemp("ops"), model_cache) as stack:
        stack.start_api()
        stack.start_worker(LDM_WORKER_METRICS_PORT=str(metrics_port))
        yield stack


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def api_metrics(stack: LocalStack) -> Samples:
    response = stack.http.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


def worker_metrics(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return parse(response.text)


def key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(({"model": "tiny-sd"} | labels).items()))


def poll(read: Callable[[], Samples], done: Callable[[Samples], bool], timeout: float = 30):
    """Scrape until `done` holds (a worker counts a job just after the client sees it end)."""
    deadline = time.monotonic() + timeout
    while not done(samples := read()):
        assert time.monotonic() < deadline, "metrics did not get there in time"
        time.sleep(0.1)
    return samples


def test_finished_jobs_move_cluster_and_worker_figures(ops: LocalStack, metrics_port: int) -> None:
    finished = key("ldm_jobs_finished_total", status="succeeded")
    succeeded = {"status": "succeeded"}
    api_before, worker_before = api_metrics(ops), worker_metrics(metrics_port)
    jobs = [ops.submit({"prompt": "one"}), ops.submit({"prompt": "two", "num_images": 2})]
    done = [ops.wait(job["id"]) for job in jobs]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"]

    api = api_metrics(ops)
    assert api[finished] == api_before.get(finished, 0) + 2  # counted as the record changed
    assert api[key("ldm_queue_depth")] == 0 and api[key("ldm_jobs_running")] == 0
    assert api[key("ldm_queue_oldest_age_seconds")] == 0
    assert api[key("ldm_live_workers")] == 1

    def delta(samples: Samples, name: str, **labels: str) -> float:
        return samples.get(key(name, **labels), 0) - worker_before.get(key(name, **labels), 0)

    worker = poll(
        lambda: worker_metrics(metrics_port),
        lambda s: delta(s, "ldm_worker_jobs_finished_total", **succeeded) == 2,
    )
    assert delta(worker, "ldm_worker_job_latency_seconds_count", **succeeded) == 2
    # Each of the 3 images is in one forward per step (20), whether they shared them or not.
    assert delta(worker, "ldm_worker_batch_images_sum") == 3 * 20
    forwards = delta(worker, "ldm_worker_denoise_seconds_count")
    assert 20 <= forwards <= 40 and delta(worker, "ldm_worker_batch_images_count") == forwards
    # Each job's latency is its life as the record tells it, give or take the clocks' read.
    lives = sum(
        (datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["created_at"]))
        .total_seconds()
        for j in done
    )
    latency = delta(worker, "ldm_worker_job_latency_seconds_sum", **succeeded)
    assert abs(latency - lives) < 1.0, (latency, lives)


def test_a_waiting_job_ages_while_the_worker_is_busy(ops: LocalStack, metrics_port: int) -> None:
    canceled = key("ldm_jobs_finished_total", status="canceled")
    before = api_metrics(ops)
    worker_before = worker_metrics(metrics_port)
    busy = ops.submit(BUSY)
    ops.wait(busy["id"], {"running"})
    waiting = ops.submit({"prompt": "waits"} | BEHIND_BUSY)
    api = poll(
        lambda: api_metrics(ops), lambda s: s[key("ldm_queue_oldest_age_seconds")] >= 1.0
    )
    assert api[key("ldm_queue_depth")] == 1 and api[key("ldm_jobs_running")] == 1
    waited = time.time() - datetime.fromisoformat(waiting["created_at"]).timestamp()
    assert api[key("ldm_queue_oldest_age_seconds")] <= waited + 1.0

    for job in (waiting, busy):  # one canceled by the API, one by the worker at a step
        assert ops.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert [ops.wait(job["id"])["status"] for job in (waiting, busy)] == ["canceled"] * 2
    api = api_metrics(ops)
    assert api[canceled] == before.get(canceled, 0) + 2
    assert api[key("ldm_queue_depth")] == 0 and api[key("ldm_jobs_running")] == 0
    name = key("ldm_worker_jobs_finished_total", status="canceled")
    poll(
        lambda: worker_metrics(metrics_port),
        lambda s: s.get(name, 0) == worker_before.get(name, 0) + 1,
    )


def dashboard_metrics() -> set[str]:
    """Every metric name the dashboard's queries and variables use."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ] + [variable.get("definition", "") for variable in dashboard["templating"]["list"]]
    return {name for query in queries for name in re.findall(r"\bldm_[a-z0-9_]+", query)}


def test_the_dashboard_queries_only_exported_metrics(ops: LocalStack, metrics_port: int) -> None:
    assert ops.wait(ops.submit({"prompt": "for the dashboard"})["id"])["status"] == "succeeded"
    exported = {name for name, _ in api_metrics(ops)}
    exported |= {name for name, _ in worker_metrics(metrics_port)}
    # A CPU worker exports no GPU series; their names come from the collector that makes them
    # (a CUDA worker's scrape is checked in tests/worker/test_worker_metrics.py).
    gpu = {family.name for family in GpuMemory(torch.device("cuda"), "tiny-sd").describe()}
    used = dashboard_metrics()
    assert len(used) >= 15
    assert used <= exported | gpu, f"not exported: {sorted(used - exported - gpu)}"


def test_rq_dashboard_shows_our_queues_and_jobs(ops: LocalStack) -> None:
    job = ops.wait(ops.submit({"prompt": "seen by rq-dashboard"})["id"])
    assert job["status"] == "succeeded"
    port = free_port()
    # The documented command: RQ's JSON serializer (--json), no deleting from the UI, a login.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rq_dashboard",
            "--json",
            "--disable-delete",
            "--redis-url",
            ops.env["LDM_REDIS_URL"],
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--username",
            "ops",
            "--password",
            "secret",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30, "rq-dashboard", proc)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", auth=("ops", "secret"), timeout=10
        ) as client:
            assert httpx.get(f"http://127.0.0.1:{port}/0/data/queues.json").status_code == 401
            queues = client.get("/0/data/queues.json").json()["queues"]
            (ours,) = [queue for queue in queues if queue["name"] == "ldm:tiny-sd"]
            assert ours["count"] == 0
            # Finished RQ jobs stay a minute (RQ_RESULT_TTL): reading them needs --json.
            listed = client.get("/0/data/jobs/ldm:tiny-sd/finished/100/asc/1.json")
            assert listed.status_code == 200
            assert job["id"] in [entry["id"] for entry in listed.json()["jobs"]]
            detail = client.get(f"/0/data/job/{job['id']}.json")
            assert detail.status_code == 200 and detail.json()["status"] == "finished"
            workers = client.get("/0/data/workers.json").json()["workers"]
            assert [w["queues"] for w in workers] == [["ldm:tiny-sd"]]
            assert client.get("/0/view/queues", follow_redirects=True).status_code == 200
    finally:
        stop(proc)
