"""The playground page (`GET /`) in Debian's headless Chromium, driven by Playwright, against
real API processes, Redis and a worker on the tiny model."""

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from app.core.store import JobStore
from scripts.stack import LocalStack
from tests.e2e.conftest import BUSY
from tests.e2e.playground_page import (
    JOB_TIMEOUT_MS,
    browser_page,
    chromium,
    drop_file,
    fill,
    generate,
    job_id,
    loaded_images,
    png,
    shown,
    status,
    wait_finished,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser, stack: LocalStack) -> Iterator[Page]:
    with browser_page(browser, stack.http) as page:
        yield page


@contextmanager
def busy_worker(stack: LocalStack) -> Iterator[str]:
    """The only worker is running a long job (canceled on the way out): new jobs queue."""
    busy = stack.submit(BUSY)["id"]
    stack.wait(busy, {"running"})
    try:
        yield busy
    finally:
        stack.http.post(f"/v1/jobs/{busy}/cancel")
        stack.wait(busy)


def test_text_to_image_shows_queue_progress_and_images(stack: LocalStack, page: Page) -> None:
    with busy_worker(stack):
        fill(page, "a red lighthouse", Width=64, Height=64, Steps=8, Seed=1234, Images=2)
        generate(page)
        expect(status(page)).to_have_text("Queued, position 1")
        expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
        job = job_id(page)
    wait_finished(page)
    texts = shown(page)
    assert texts[0] == "Queued, position 1", texts
    steps = [int(m[1]) for t in texts if (m := re.fullmatch(r"Running, step (\d+) / 8", t))]
    assert steps and steps == sorted(steps) and steps[-1] == 8, texts
    assert texts[-1].startswith("Done: 2 images in "), texts
    images = loaded_images(page)
    api_job = stack.job(job)
    assert api_job["status"] == "succeeded"
    assert api_job["request"] | {"prompt": "a red lighthouse", "seed": 1234} == api_job["request"]
    assert (api_job["request"]["width"], api_job["request"]["num_images"]) == (64, 2)
    # Both images really loaded, from the job's own image URLs.
    assert [i["width"] for i in images] == [64, 64]
    origin = str(stack.http.base_url).rstrip("/")
    assert [i["src"] for i in images] == [origin + i["url"] for i in api_job["images"]]
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()


def test_cancel_a_queued_job_from_the_page(stack: LocalStack, page: Page) -> None:
    with busy_worker(stack):
        fill(page, "never drawn", Width=512, Height=512, Steps=4)  # BUSY's size: it waits
        generate(page)
        expect(status(page)).to_have_attribute("data-status", "queued")
        job = job_id(page)
        page.get_by_role("button", name="Cancel").click()
        expect(status(page)).to_have_text("Canceled")
        assert stack.job(job)["status"] == "canceled"
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(page.locator("#images img")).to_have_count(0)
    assert stack.job(job)["started_at"] is None


def test_cancel_a_running_job_from_the_page(stack: LocalStack, page: Page) -> None:
    fill(page, "too long", Width=512, Height=512, Steps=100)
    generate(page)
    expect(status(page)).to_contain_text("Running, step", timeout=JOB_TIMEOUT_MS)
    page.get_by_role("button", name="Cancel").click()
    wait_finished(page, "canceled")
    expect(status(page)).to_have_text("Canceled")
    job = stack.job(job_id(page))
    assert job["status"] == "canceled" and job["progress"]["step"] < 100


def test_a_dropped_event_stream_resumes_where_it_left_off(stack: LocalStack, page: Page) -> None:
    asked: list[str | None] = []
    first: list[str] = []

    def drop_the_first(route: Route) -> None:
        asked.append(route.request.headers.get("last-event-id"))
        if len(asked) > 1:
            route.continue_()  # the real stream
            return
        # The first connection ends after one event, as a dying proxy or replica would end it.
        job = route.request.url.split("/")[-2]
        first.append(stack.redis.xrange(JobStore.events_key(job), count=1)[0][0].decode())
        event = f"event: status\r\nid: {first[0]}\r\ndata: {json.dumps(stack.job(job))}\r\n\r\n"
        route.fulfill(status=200, content_type="text/event-stream", body=event)

    page.route("**/v1/jobs/*/events", drop_the_first)
    # The job waits behind a busy worker until the first stream has been served, so that stream
    # carries a job still to run (a job done by then would leave the page nothing to resume).
    # BUSY's size: a job of another size would join it at its next step.
    with busy_worker(stack):
        fill(page, "interrupted", Width=512, Height=512, Steps=4)
        generate(page)
        expect(status(page)).to_have_attribute("data-status", "queued")
        for _ in range(200):  # the route handler runs while Playwright waits
            if first:
                break
            page.wait_for_timeout(50)
    wait_finished(page)
    assert asked == [None, first[0]]  # it came back with Last-Event-ID
    assert [i["width"] for i in loaded_images(page)] == [512]


@pytest.mark.parametrize("how", ["file input", "drop"])
def test_image_to_image_with_an_init_image(
    stack: LocalStack, page: Page, tmp_path: Path, how: str
) -> None:
    init = png(tmp_path / "init.png")
    fill(page, "the same, but blue", Steps=10)
    if how == "drop":
        drop_file(page, init)
    else:
        page.get_by_label("Choose a PNG, JPEG or WebP, or drop one here").set_input_files(init)
    expect(page.locator("#init-preview")).to_be_visible()
    expect(page.get_by_label("Strength")).to_be_enabled()
    expect(page.get_by_label("Width", exact=True)).to_have_attribute("placeholder", "from image")
    generate(page)
    wait_finished(page)
    job = stack.job(job_id(page))
    assert job["request"]["mode"] == "image-to-image"
    assert job["request"]["strength"] == pytest.approx(0.8)
    assert (job["request"]["width"], job["request"]["height"]) == (64, 64)  # the init image's
    assert [i["width"] for i in loaded_images(page)] == [64]


@pytest.mark.parametrize(
    ("label", "value", "field", "message"),
    [
        ("Width", 70, "width", "multiple of 8"),  # the schema's check
        ("Steps", 1000, "num_inference_steps", "at most 100"),  # the deployment's bound
    ],
)
def test_a_bad_field_shows_the_api_error_next_to_it(
    stack: LocalStack, page: Page, label: str, value: int, field: str, message: str
) -> None:
    fill(page, "fine prompt", **{label: value})
    generate(page)
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(field)
    expect(page.locator(f'[data-error-for="{field}"]')).to_contain_text(message)
    expect(page.get_by_label(label, exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#job")).not_to_have_attribute("data-job-id", re.compile("."))
    # Fixed, the same form goes through and the error goes away.
    fill(page, "fine prompt", Width=64, Height=64, Steps=2)
    generate(page)
    expect(alert).to_be_hidden()
    expect(page.get_by_label(label, exact=True)).not_to_have_attribute("aria-invalid", "true")
    wait_finished(page)


# Test-only: every preview the page showed (its step, and its size once loaded).
RECORD_PREVIEWS = """() => {
  window.previewsShown = [];
  const img = document.getElementById("preview-image");
  img.addEventListener("load", () => window.previewsShown.push({
    step: Number(img.dataset.step), width: img.naturalWidth, height: img.naturalHeight,
    src: img.src.slice(0, 23),
  }));
}"""


def test_the_page_shows_live_previews_while_the_job_runs(stack: LocalStack, page: Page) -> None:
    page.evaluate(RECORD_PREVIEWS)
    fill(page, "a blue square", Width=256, Height=128, Steps=60, Seed=3)
    expect(page.get_by_label("Live preview")).to_be_checked()  # on by default
    generate(page)
    preview = page.get_by_role("img", name="Live preview of the running job")
    expect(preview).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(status(page)).to_contain_text("Running, step")  # beside the progress, as it runs
    box = preview.bounding_box()
    assert box and box["width"] == pytest.approx(2 * box["height"], abs=2)  # scaled up, 2:1
    assert box["width"] >= 128
    expect(page.locator("#preview-caption")).to_contain_text(re.compile(r"step \d+ / 60"))
    wait_finished(page)
    expect(preview).to_be_hidden()  # the images take its place
    job = stack.job(job_id(page))
    assert job["request"]["previews"] is True
    previews = page.evaluate("window.previewsShown")
    assert previews, "no preview was shown"
    steps = [p["step"] for p in previews]
    assert steps == sorted(steps) and all(0 < step < 60 for step in steps)
    for shown_preview in previews:
        assert shown_preview["src"] == "data:image/webp;base64,"
        assert (shown_preview["width"], shown_preview["height"]) == (32, 16)  # latent size
    assert [i["width"] for i in loaded_images(page)] == [256]


def test_previews_can_be_turned_off(stack: LocalStack, page: Page) -> None:
    fill(page, "a quiet job", Width=64, Height=64, Steps=20)
    page.get_by_label("Live preview").uncheck()
    generate(page)
    wait_finished(page)
    assert stack.job(job_id(page))["request"]["previews"] is False
    expect(page.locator("#preview")).to_be_hidden()
