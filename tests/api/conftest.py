"""API tests: the real app in-process over its ASGI interface, a real Redis, no worker."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from app.api.main import create_app
from app.core.settings import Settings
from app.core.workers import CLOCK_KEY

# Two tenants' keys, for the `locked` service.
ALICE = {"Authorization": "Bearer alice-key-0123"}
BOB = {"Authorization": "Bearer bob-key-4567"}


@pytest.fixture
def locked(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    """The app with API keys: tenants alice and bob."""
    keys = SecretStr("alice:alice-key-0123, bob:bob-key-4567")
    with TestClient(create_app(settings.model_copy(update={"api_keys": keys}))) as client:
        yield client


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def assert_problem(response, status: int) -> dict:
    """The response is an RFC 9457 problem of that status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def nothing_written(redis: Redis) -> bool:
    """Redis holds nothing but the housekeeping's outage clock: a refused request left no trace."""
    return set(redis.keys()) <= {CLOCK_KEY.encode()}
