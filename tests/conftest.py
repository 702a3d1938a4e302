"""Shared fixtures: a real redis-server for the whole session, flushed around each test."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from app.core.settings import Settings
from scripts.procs import free_port, start_redis, stop


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per session: the tiny model is built once, by whoever needs it first."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def settings(redis_url: str, model_cache: Path, tmp_path: Path) -> Settings:
    """Settings as a test deployment has them: real Redis, a fresh image folder."""
    return Settings(
        redis_url=redis_url,
        storage_url=(tmp_path / "images").as_uri(),
        model_cache=model_cache,
    )
