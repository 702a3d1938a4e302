"""The playground with images in S3 (moto) and an API key: images redirect to presigned URLs
of another origin, which the page's CSP must allow, and a keyed page fetches them itself."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from scripts.stack import LocalStack
from tests.e2e.playground_page import (
    KEY_LABEL,
    browser_page,
    chromium,
    enter_key,
    fill,
    generate,
    job_id,
    loaded_images,
    wait_finished,
)

KEY = "s3cret-playground-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LocalStack]:
    """An open API and one that asks for a key, on one worker; images in an S3 bucket."""
    with LocalStack(tmp_path_factory.mktemp("s3stack"), model_cache) as stack:
        stack.use_s3()
        stack.start_api()
        stack.start_api(LDM_API_KEYS=f"alice:{KEY}")
        stack.start_worker()
        yield stack


@pytest.fixture
def open_api(s3_stack: LocalStack) -> httpx.Client:
    return s3_stack.apis[0][1]


@pytest.fixture
def keyed_api(s3_stack: LocalStack) -> httpx.Client:
    return s3_stack.apis[1][1]


def test_images_load_from_the_storage_they_redirect_to(
    browser: Browser, open_api: httpx.Client
) -> None:
    with browser_page(browser, open_api) as page:
        fill(page, "stored far away", Width=64, Height=64, Steps=4)
        generate(page)
        wait_finished(page)
        images = loaded_images(page)
        job = open_api.get(f"/v1/jobs/{job_id(page)}").json()
    assert open_api.get(job["images"][0]["url"]).status_code == 307  # to the bucket
    assert [i["width"] for i in images] == [64]  # so the CSP let the bucket's image in
    assert images[0]["src"] == str(open_api.base_url).rstrip("/") + job["images"][0]["url"]


@pytest.fixture
def keyed_page(browser: Browser, keyed_api: httpx.Client) -> Iterator[Page]:
    with browser_page(browser, keyed_api) as page:
        yield page


def test_with_an_api_key_everything_goes_with_the_header(
    keyed_api: httpx.Client, keyed_page: Page
) -> None:
    page = keyed_page
    expect(page.locator("#model-hint")).to_contain_text("needs an API key")
    enter_key(page, KEY)
    fill(page, "with a key", Width=64, Height=64, Steps=4)
    generate(page)
    wait_finished(page)
    # <img> cannot send the header: the page fetched the bytes (from the bucket, redirected)
    # and shows them from blob: URLs.
    images = loaded_images(page)
    assert [i["width"] for i in images] == [64] and images[0]["src"].startswith("blob:")
    auth = {"Authorization": f"Bearer {KEY}"}
    job = keyed_api.get(f"/v1/jobs/{job_id(page)}", headers=auth).json()
    assert job["status"] == "succeeded" and job["request"]["prompt"] == "with a key"
    # Kept in this browser: a reload finds the key and lists the models at once.
    page.reload()
    expect(page.get_by_label(KEY_LABEL)).to_have_value(KEY)
    expect(page.locator("#model-hint")).to_contain_text("1 worker")
