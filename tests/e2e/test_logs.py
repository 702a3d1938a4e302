"""What the processes log: JSON lines with request and job ids, and no keys, prompts or images."""

import json
from pathlib import Path

from scripts.stack import LocalStack
from worker.tiny_model import ensure_tiny_model

KEY = "k3y-that-must-never-be-logged"
PROMPT = "zebra-secret-prompt"
# Long enough that CLIP truncates it: diffusers warns about that, quoting the cut-off part.
LONG_PROMPT = " ".join(["filler"] * 120) + " " + PROMPT


def test_logs_are_json_with_ids_and_no_secrets(tmp_path: Path, model_cache: Path) -> None:
    ensure_tiny_model(model_cache)
    settings = {"LDM_LOG_LEVEL": "INFO", "LDM_API_KEYS": f"acme:{KEY}"}
    with LocalStack(tmp_path, model_cache, **settings) as stack:
        client = stack.start_api()
        client.headers["Authorization"] = f"Bearer {KEY}"
        stack.start_worker()
        response = client.post(
            "/v1/jobs",
            json={"prompt": LONG_PROMPT, "num_inference_steps": 2},
            headers={"X-Request-ID": "req-42"},
        )
        assert response.headers["x-request-id"] == "req-42"
        job_id = response.json()["id"]
        assert stack.wait(job_id)["status"] == "succeeded"
        client.get(f"/v1/jobs/{job_id}/images/0")
        client.post("/v1/jobs", json={"prompt": "x", "width": 13})  # a 422 is logged too
    api_lines = (tmp_path.glob("api-*.log")).__next__().read_text().splitlines()
    worker_lines = (tmp_path / "worker-0.log").read_text().splitlines()
    records = [json.loads(line) for line in api_lines + worker_lines]  # every line is JSON
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    text = "\n".join(api_lines + worker_lines)
    assert KEY not in text and PROMPT not in text and "base64" not in text
    submit = [r for r in records if r["request_id"] == "req-42"]
    assert submit and all(r["job_id"] == job_id for r in submit)
    ran = [r for r in records if r["logger"].startswith("rq.worker") and job_id in r["msg"]]
    assert ran  # the worker's lines about the job name it
