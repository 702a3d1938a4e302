"""`GET /` serves the playground with a Content-Security-Policy that lets only its own inline
script and style run, and lets images come from the API and the image storage only."""

import base64
import hashlib
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.api.main import create_app
from app.core.settings import Settings


def csp(response) -> dict[str, list[str]]:
    """The policy's directives and their sources."""
    policy = response.headers["content-security-policy"]
    return {name: sources for name, *sources in (d.split() for d in policy.split(";"))}


def inline_hash(html: str, tag: str) -> str:
    (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"


def test_the_page_and_its_policy(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<form id="job-form"' in response.text and "/v1/jobs" in response.text
    policy = csp(response)
    assert policy["default-src"] == ["'none'"]
    # Exactly the page's own script and style, by hash: no 'unsafe-inline', no other source.
    assert policy["script-src"] == [inline_hash(response.text, "script")]
    assert policy["style-src"] == [inline_hash(response.text, "style")]
    assert policy["img-src"] == ["'self'", "blob:", "data:"]  # images served by the API
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert response.headers["x-content-type-options"] == "nosniff"
    # Nothing the page needs comes from elsewhere (it works offline, without a CDN).
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", response.text)


def test_the_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.fixture
def s3_client(s3_settings: Settings, redis: Redis) -> Iterator[TestClient]:
    with TestClient(create_app(s3_settings)) as client:
        yield client


def test_with_s3_images_may_come_from_the_storage(s3_client: TestClient, s3_endpoint: str) -> None:
    # Image URLs redirect to presigned storage URLs: <img> loads them, fetch() with a key too.
    policy = csp(s3_client.get("/"))
    assert policy["img-src"] == ["'self'", "blob:", "data:", s3_endpoint]
    assert policy["connect-src"] == ["'self'", s3_endpoint]


def test_the_storage_origin_is_the_one_clients_reach(s3_settings: Settings, redis: Redis) -> None:
    public = s3_settings.model_copy(update={"s3_public_endpoint_url": "https://img.example.com"})
    with TestClient(create_app(public)) as client:
        policy = csp(client.get("/"))
    assert policy["img-src"][-1] == "https://img.example.com"
    assert s3_settings.s3_endpoint_url not in policy["connect-src"]
