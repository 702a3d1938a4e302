"""Shared fixtures: a real redis-server (flushed around each test) and S3 server per session."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from redis import Redis

from app.core.queue import JobQueue
from app.core.settings import Settings
from app.core.store import JobStore
from scripts.procs import free_port, start_redis, start_s3, stop


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


@pytest.fixture
def queue(redis: Redis) -> JobQueue:
    """The job store and queues on the test Redis, as the API and workers use them."""
    return JobQueue(redis, JobStore(redis, result_ttl=600), job_timeout=30)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per session: the tiny model is built once, by whoever needs it first."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def settings(redis_url: str, model_cache: Path, tmp_path: Path) -> Settings:
    """Settings as a test deployment has them: real Redis, a fresh image folder, and the
    random-weight tiny-sd, fastest where what the pictures show is beside the point."""
    return Settings(
        model="tiny-sd",
        redis_url=redis_url,
        storage_url=(tmp_path / "images").as_uri(),
        model_cache=model_cache,
    )


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server over real HTTP (moto's server mode), for the whole session."""
    proc = start_s3(port := free_port())
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`settings` with images in a fresh bucket of the S3 server."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"ldm-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return settings.model_copy(
        update={
            "storage_url": f"s3://{bucket}/jobs",
            "s3_endpoint_url": s3_endpoint,
            "s3_region": "us-east-1",
        }
    )


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-model tests: their ops are too small to gain from
    more, and on a busy machine spare threads wait for a taken core and slow every call."""
    import torch  # only the modules that ask for it need torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
