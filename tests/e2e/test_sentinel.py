"""High availability: API and workers reach Redis through Sentinel; the primary is killed
mid-load and a replica takes over; no accepted job is lost."""

import signal
import subprocess
import threading
from pathlib import Path

import httpx
from redis import Redis

from scripts.procs import free_port, port_open, start_redis, stop, wait_until
from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model


def start_replica(port: int, primary: int, workdir: Path) -> subprocess.Popen:
    proc = start_redis(port, workdir, durable=True, replica_of=primary)
    replica = Redis(port=port)
    wait_until(lambda: replica.info("replication")["master_link_status"] == "up", 20, "sync")
    return proc


def start_sentinel(port: int, primary: int, workdir: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor mymaster 127.0.0.1 {primary} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        "sentinel failover-timeout mymaster 5000\n"
    )
    proc = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    wait_until(lambda: port_open("127.0.0.1", port), 10, "sentinel", proc)
    sentinel = Redis(port=port)
    wait_until(lambda: sentinel.sentinel_slaves("mymaster"), 20, "sentinel sees the replica")
    return proc


def submit_until_accepted(client: httpx.Client, index: int) -> str:
    """A client that retries what the service asks it to, with an idempotency key."""
    while True:
        try:
            response = client.post(
                "/v1/jobs",
                json={"prompt": f"p{index}", "num_inference_steps": 2},
                headers={"Idempotency-Key": f"ha-{index}"},
            )
            if response.status_code == 202:
                return response.json()["id"]
        except httpx.TransportError:
            pass
        threading.Event().wait(0.2)


def test_failover_mid_load_loses_no_accepted_job(tmp_path: Path, model_cache: Path) -> None:
    ensure_tiny_model(model_cache)
    sentinel_port, replica_port = free_port(), free_port()
    env = {"LDM_REDIS_SENTINELS": f"127.0.0.1:{sentinel_port}", "LDM_SWEEP_INTERVAL": "2"}
    with LocalStack(tmp_path, model_cache, **env) as stack:
        replica = start_replica(replica_port, stack.redis_port, tmp_path / "replica")
        sentinel = start_sentinel(sentinel_port, stack.redis_port, tmp_path / "sentinel")
        try:
            client = stack.start_api()
            stack.start_worker()
            accepted = [submit_until_accepted(client, i) for i in range(10)]
            stack.redis_proc.send_signal(signal.SIGKILL)  # the primary dies, no goodbye
            stack.redis_proc.wait()
            accepted += [submit_until_accepted(client, i) for i in range(10, 20)]
            ports = Redis(port=sentinel_port).sentinel_get_master_addr_by_name("mymaster")
            assert int(ports[1]) == replica_port  # the replica took over
            for job_id in accepted:
                wait_until(
                    lambda job_id=job_id: (
                        client.get(f"/v1/jobs/{job_id}").json().get("status") == "succeeded"
                    ),
                    120,
                    f"job {job_id}",
                )
        finally:
            stop(sentinel)
            stop(replica)
