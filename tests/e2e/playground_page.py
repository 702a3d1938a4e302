"""Driving the playground page in Debian's headless Chromium with Playwright: the browser, a
page per test, and what a user does and sees there."""

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
JOB_TIMEOUT_MS = 90_000  # a noisy CPU box; the tiny model takes about a second per job
KEY_LABEL = "API key (when the service requires one)"
# Test-only (Playwright's init scripts bypass the page's CSP): every text the status line
# showed, in order, even several set within one task.
RECORD_STATUS = """
window.statusTexts = [];
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) window.statusTexts.push(node.textContent);
    }
  }).observe(document.getElementById("status"), {childList: true});
});
"""


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's headless Chromium (Playwright downloads no browser); fails if it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as playwright:
        # A container has no user namespaces for the sandbox and a small /dev/shm.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_page(browser: Browser, api: httpx.Client) -> Iterator[Page]:
    """The playground of `api` in a fresh browser context; fails the test on any script error
    or Content-Security-Policy violation the page meets."""
    context = browser.new_context(base_url=str(api.base_url))
    context.add_init_script(RECORD_STATUS)
    page = context.new_page()
    problems: list[str] = []
    # Chromium logs each 4xx answer of fetch() as a console error; those the page shows itself.
    page.on(
        "console",
        lambda m: m.type == "error"
        and not m.text.startswith("Failed to load resource")
        and problems.append(m.text),
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto("/")
    try:
        yield page
    finally:
        context.close()
    assert problems == [], "the page logged errors"


def fill(page: Page, prompt: str, **fields: int) -> None:
    """Type a prompt and set number fields by their labels, once the models are listed."""
    expect(page.locator("#model option")).not_to_have_count(0)
    page.get_by_label("Prompt", exact=True).fill(prompt)
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(str(value))


def enter_key(page: Page, key: str) -> None:
    page.get_by_label(KEY_LABEL).fill(key)
    page.get_by_label(KEY_LABEL).press("Tab")  # leaving the field is its change event


def generate(page: Page) -> None:
    page.get_by_role("button", name="Generate").click()


def status(page: Page) -> Locator:
    """The status line of the job the page follows."""
    return page.locator("#status")


def wait_finished(page: Page, outcome: str = "succeeded") -> None:
    expect(status(page)).to_have_attribute("data-status", outcome, timeout=JOB_TIMEOUT_MS)


def shown(page: Page) -> list[str]:
    """What the status line said so far, in order."""
    return page.evaluate("window.statusTexts")


def job_id(page: Page) -> str:
    """The id of the job the page follows."""
    job = page.locator("#job")
    expect(job).to_have_attribute("data-job-id", re.compile(r"^j_\w{26}$"))
    return job.get_attribute("data-job-id") or ""


def loaded_images(page: Page) -> list[dict]:
    """The result's images (src, naturalWidth) once every one has loaded or failed to."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('#images img')]"
        ".every(i => i.complete && (i.src || i.dataset.failed))"
    )
    return page.eval_on_selector_all(
        "#images img", "imgs => imgs.map(i => ({src: i.src, width: i.naturalWidth}))"
    )


def png(path: Path, size: int = 64) -> Path:
    """A small PNG file to use as an init image."""
    Image.new("RGB", (size, size), (200, 80, 40)).save(path)
    return path


def drop_file(page: Page, path: Path) -> None:
    """Drag a file from outside the browser onto the drop zone."""
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        base64.b64encode(path.read_bytes()).decode(),
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
