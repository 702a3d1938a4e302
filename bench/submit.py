"""Submit latency and rate of one API process, next to a bare FastAPI endpoint in the same run.

    python -m bench.submit [--duration 5] [--warmup 1] [--concurrency 1 16 64]

Starts Redis and one API process (no worker; the queue cap is set out of reach, so every
submit is accepted and nothing drains), and one bare FastAPI app (`bench.bare_app`: a small
pydantic body in, 202 JSON out, same uvicorn loop and parser). Both are driven by `wrk` with
the same POST body, closed loop, C connections for a fixed time after a warm-up; service and
bare alternate at each concurrency, and Redis is flushed before each service run so every run
starts from an empty queue. Goal: p99 < 10 ms at 64 clients and >= 2,000 submits/s.
Needs Debian's `wrk` (apt-get install -y wrk) and redis-server.
"""

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from scripts.procs import free_port, port_open, start_python, stop, wait_until
from scripts.stack import LocalStack

BODY = {"prompt": "a red circle", "num_inference_steps": 4}
CONCURRENCY = (1, 16, 64)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _lua(body: dict[str, Any]) -> str:
    """A wrk script that POSTs `body` as JSON."""
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """p50/p99 (ms), requests/s and error counts from `wrk --latency` output."""
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "p50_ms": _ms(percentiles["50"]),
        "p99_ms": _ms(percentiles["99"]),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(n) for n in socket.groups()) if socket else 0),
    }


def wrk(url: str, script: Path, connections: int, duration: float) -> dict[str, Any]:
    """One closed-loop run of wrk: `connections` clients, each sending as soon as answered."""
    result = subprocess.run(
        [
            "wrk",
            "-t1",  # one thread drives 64 connections easily and leaves the other core alone
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return parse_wrk(result.stdout)


def _accepts(url: str) -> None:
    response = httpx.post(url, json=BODY, timeout=10)
    assert response.status_code == 202, f"{url}: {response.status_code} {response.text}"


def measure(
    duration: float = 5.0, warmup: float = 1.0, concurrency: tuple[int, ...] = CONCURRENCY
) -> list[dict[str, Any]]:
    """One row per concurrency: service and bare p50/p99 (ms), requests/s, and their ratio."""
    if shutil.which("wrk") is None:
        raise FileNotFoundError("wrk not found: apt-get install -y wrk")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        script.write_text(_lua(BODY))
        settings = {"LDM_MAX_QUEUE_LENGTH": str(10**9), "LDM_RESULT_TTL": "60"}
        with LocalStack(workdir, Path(".cache/models").resolve(), **settings) as stack:
            service = f"{stack.start_api().base_url}/v1/jobs"
            bare_port = free_port()
            bare_proc = start_python(
                "bench.bare_app", {"BARE_PORT": str(bare_port)}, workdir / "bare.log"
            )
            try:
                wait_until(lambda: port_open("127.0.0.1", bare_port), 30, "bare app", bare_proc)
                bare = f"http://127.0.0.1:{bare_port}/v1/jobs"
                _accepts(service)
                _accepts(bare)
                for clients in concurrency:
                    runs = {}
                    for name, url in (("service", service), ("bare", bare)):
                        if name == "service":
                            stack.redis.flushdb()
                        wrk(url, script, clients, warmup)
                        if name == "service":
                            stack.redis.flushdb()
                        runs[name] = wrk(url, script, clients, duration)
                        if runs[name]["errors"]:
                            raise RuntimeError(f"{name} at {clients} clients: {runs[name]}")
                    rows.append(
                        {
                            "concurrency": clients,
                            **{f"service_{k}": v for k, v in runs["service"].items()},
                            **{f"bare_{k}": v for k, v in runs["bare"].items()},
                            "service_over_bare": runs["service"]["rps"] / runs["bare"]["rps"],
                        }
                    )
            finally:
                stop(bare_proc)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| concurrency | service p50 ms | p99 ms | submits/s | bare p50 | bare p99 | bare req/s "
        "| service/bare |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['service_p50_ms']:.2f} | {r['service_p99_ms']:.2f} "
            f"| {r['service_rps']:.0f} | {r['bare_p50_ms']:.2f} | {r['bare_p99_ms']:.2f} "
            f"| {r['bare_rps']:.0f} | {r['service_over_bare']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args()
    rows = measure(args.duration, args.warmup, tuple(args.concurrency))
    print(f"POST /v1/jobs {json.dumps(BODY)}, one API process, wrk -t1, {args.duration:g} s each")
    print(table(rows))


if __name__ == "__main__":
    main()
