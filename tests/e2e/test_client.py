"""The Python client and the `ldm` command against a real service (Redis, API, worker)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from PIL import Image

from ldm_client import ApiError, AsyncClient, Client, JobFailed
from ldm_client.client import Backoff, settings
from ldm_client.following import EventStream
from scripts.stack import LocalStack
from tests.e2e.conftest import BEHIND_BUSY, BUSY, SLOW

LDM = str(Path(sys.executable).parent / "ldm")


@pytest.fixture
def client(stack: LocalStack) -> Iterator[Client]:
    with Client(str(stack.http.base_url)) as client:
        yield client


def ldm(stack: LocalStack, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"LDM_URL": str(stack.http.base_url)}
    return subprocess.run(
        [LDM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_generate_returns_the_images_asked_for(client: Client) -> None:
    images = client.generate("a red circle", num_images=2, seed=5, num_inference_steps=2)
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    again = client.generate("a red circle", seed=6, num_inference_steps=2)[0]
    # seed + i, as the service promises (alone or in a batch: within float noise)
    assert np.abs(np.asarray(again, int) - np.asarray(images[1], int)).max() <= 1


def test_image_to_image_takes_a_pil_image(client: Client) -> None:
    init = Image.new("RGB", (96, 96), "blue")
    (image,) = client.generate("a circle", init_image=init, strength=0.5, num_inference_steps=4)
    assert image.size == (96, 96)


def test_inpainting_takes_a_mask_and_keeps_what_it_does_not_cover(client: Client) -> None:
    init = Image.new("RGB", (64, 64), (20, 200, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 64, 32))  # repaint the top half
    (image,) = client.generate("a circle", init_image=init, mask_image=mask, seed=1,
                               num_inference_steps=2)  # fmt: skip
    pixels = np.asarray(image, int)
    assert (pixels[32:] == (20, 200, 40)).all() and (pixels[:32] != (20, 200, 40)).any()


def test_errors_carry_the_problem_fields(client: Client) -> None:
    with pytest.raises(ApiError) as invalid:
        client.submit("a red circle", width=65)
    assert invalid.value.status == 422 and not invalid.value.retryable
    assert [e["field"] for e in invalid.value.errors] == ["body.width"]
    with pytest.raises(ApiError) as missing:
        client.get("j_00000000000000000000000000")
    assert missing.value.status == 404 and "never existed" in missing.value.detail


def test_a_canceled_job_raises_job_failed_and_cannot_be_canceled_twice(
    stack: LocalStack, client: Client
) -> None:
    busy = client.submit(**BUSY)
    stack.wait(busy["id"], {"running"})
    queued = client.submit("never", num_inference_steps=2, **BEHIND_BUSY)  # waits behind it
    client.cancel(queued["id"])
    client.cancel(busy["id"])
    with pytest.raises(JobFailed) as failed:
        client.images(client.wait(queued["id"], timeout=60))
    assert failed.value.code == "canceled"
    with pytest.raises(ApiError) as conflict:
        client.cancel(queued["id"])
    assert conflict.value.status == 409


def test_the_async_client_does_the_same(stack: LocalStack) -> None:
    async def main() -> list[Image.Image]:
        async with AsyncClient(str(stack.http.base_url)) as client:
            seen: list[str] = []

            async def note(job: dict) -> None:
                seen.append(job["status"])

            job = await client.submit("a green square", seed=1, num_inference_steps=2)
            done = await client.wait(job["id"], timeout=60, on_update=note)
            assert seen[-1] == "succeeded" and [m["name"] for m in await client.models()]
            return await client.images(done)

    assert [image.size for image in anyio.run(main)] == [(64, 64)]


def test_wait_follows_the_job_live_and_keeps_its_deadline(
    stack: LocalStack, client: Client
) -> None:
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    # Busy's size: it waits in the queue behind busy (other sizes would join it).
    behind = {k: v for k, v in SLOW.items() if k != "prompt"} | BEHIND_BUSY
    job = client.submit("slow", **behind)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait(job["id"], timeout=1)  # still queued behind the busy one
    assert time.monotonic() - started < 5
    seen: list[dict] = []
    client.cancel(busy["id"])
    done = client.wait(job["id"], timeout=60, on_update=seen.append)
    assert done["status"] == "succeeded" and seen[-1] == done
    steps = [j["progress"]["step"] for j in seen if j["status"] == "running" and j["progress"]]
    # Step by step as the worker reports them, not a poll now and then.
    assert steps == sorted(steps) and len(set(steps)) >= 10 and steps[-1] == 60


def test_event_stream_lines_make_the_job() -> None:
    events = EventStream()
    lines = [
        ": ping",
        "",
        "id: 1-0",
        "event: status",
        'data: {"status": "running", "progress": null}',
        "",
        "id: 2-0",
        "event: progress",
        'data: {"step": 3, "total_steps": 9}',
        "",
    ]
    jobs = [job for line in lines if (job := events.feed(line)) is not None]
    assert jobs == [
        {"status": "running", "progress": None},
        {"status": "running", "progress": {"step": 3, "total_steps": 9}},
    ]
    assert events.headers() == {"Last-Event-ID": "2-0"}


def test_backoff_honours_retry_after_and_the_deadline() -> None:
    backoff = Backoff(timeout=0.5)
    assert backoff.next() == pytest.approx(0.2)
    assert backoff.next(ApiError(503, {"title": "Service Unavailable"}, 0.25)) == 0.25
    time.sleep(0.5)
    with pytest.raises(TimeoutError):
        backoff.next()


def test_ldm_generate_saves_each_image(stack: LocalStack, tmp_path: Path) -> None:
    done = ldm(
        stack,
        "generate",
        "a red circle",
        "-o",
        "out.webp",
        "-n",
        "2",
        "--steps",
        "2",
        "--seed",
        "3",
        "--size",
        "64x128",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["out-0.webp", "out-1.webp"]
    for name in done.stdout.split():
        image = Image.open(tmp_path / name)
        assert image.format == "WEBP" and image.size == (64, 128)


def test_ldm_exit_codes(stack: LocalStack, tmp_path: Path) -> None:
    assert ldm(stack, "generate", "x", "--size", "65x64", cwd=tmp_path).returncode == 2
    assert ldm(stack, "generate", "x", "--lora", "a:big", cwd=tmp_path).returncode == 2
    # tiny-sd has no adapters: the service's 422 names the field, a bad request (2).
    unknown = ldm(stack, "generate", "x", "--lora", "nope:0.5", cwd=tmp_path)
    assert unknown.returncode == 2 and "loras.0.name" in unknown.stderr
    assert ldm(stack, "status", "j_00000000000000000000000000", cwd=tmp_path).returncode == 2
    models = ldm(stack, "models", cwd=tmp_path)
    assert models.returncode == 0 and models.stdout.startswith("tiny-sd (default): 64x64")
    env = os.environ | {"LDM_URL": "http://127.0.0.1:9"}  # nothing listens there
    down = subprocess.run([LDM, "models"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 3 and "cannot reach" in down.stderr


def test_ctrl_c_while_waiting_offers_to_cancel(stack: LocalStack, tmp_path: Path) -> None:
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    env = os.environ | {"LDM_URL": str(stack.http.base_url)}
    proc = subprocess.Popen(
        [LDM, "generate", "waits", "--steps", "2", "--size", "512x512"],  # behind busy
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As at a terminal, whatever ran the tests: a suite started in the background (`&`,
        # nohup) passes SIGINT on ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    job_id = proc.stderr.readline().split()[-1]  # "job <id>", printed once submitted
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate("y\n", timeout=60)
    stack.http.post(f"/v1/jobs/{busy['id']}/cancel")
    assert proc.returncode == 130 and f"canceled {job_id}" in err
    assert stack.job(job_id)["status"] == "canceled"
    status = ldm(stack, "status", job_id, cwd=tmp_path)
    assert status.returncode == 0 and '"status": "canceled"' in status.stdout


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LDM_URL", "http://ldm.internal:8000/")
    monkeypatch.setenv("LDM_API_KEY", "k-123")
    assert settings(None, None) == (
        "http://ldm.internal:8000",
        {"Authorization": "Bearer k-123"},
    )
    monkeypatch.delenv("LDM_URL")
    assert settings("http://other", "")[0] == "http://other"
    assert settings(None, "")[1] == {}  # an empty key sends none
    assert settings(None, None)[0] == "http://localhost:8000"
