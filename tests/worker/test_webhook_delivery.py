"""The worker's webhook deliverer against a real Redis and real HTTP receivers."""

import asyncio
import base64
import datetime as dt
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from redis import Redis
from standardwebhooks.webhooks import Webhook

from app.core.jobs import ImageInfo, new_job_id
from app.core.jobs import Webhook as JobWebhook
from app.core.queue import JobQueue
from app.core.settings import Settings
from app.core.store import JobStore
from app.core.webhook_queue import ATTEMPTS_KEY, WEBHOOKS_KEY, Delivery
from scripts.procs import free_port, start_redis, stop
from tests.factories import make_params
from tests.webhook_receiver import Receiver
from worker.webhooks import Deliverer

SECRET = "whsec_" + base64.b64encode(b"a 32 byte key for the tests 1234").decode()
DELAYS = [0.2, 0.5]


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_allow_private": True,
            "webhook_retry_delays": DELAYS,
            "webhook_timeout": 1.0,
        }
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def deliverer(hook_settings: Settings, redis: Redis) -> Iterator[Deliverer]:
    deliverer = Deliverer.start_if_enabled(hook_settings, redis, JobStore(redis, 600))
    yield deliverer
    deliverer.stop()


def finished_job(queue: JobQueue, url: str) -> str:
    """A job that asked for its completion at `url` and has just succeeded (which books it)."""
    job_id = new_job_id()
    queue.accept(job_id, make_params(), "t1", webhook=JobWebhook(url=url, events=["completed"]))
    queue.store.start(job_id, total_steps=4)
    image = ImageInfo(url="/x", width=64, height=64, seed=1, content_type="image/png")
    assert queue.store.succeed(job_id, [image])
    return job_id


def settled(redis: Redis) -> bool:
    """Nothing left to deliver or retry."""
    return redis.zcard(WEBHOOKS_KEY) == 0 and not redis.exists(ATTEMPTS_KEY)


def wait_until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_completion_is_delivered_signed(
    deliverer: Deliverer, receiver: Receiver, queue: JobQueue
) -> None:
    job_id = finished_job(queue, receiver.url + "/hooks/ldm?token=abc")
    (request,) = receiver.wait_for(lambda r: len(r) >= 1)
    assert request.path == "/hooks/ldm?token=abc"
    assert request.headers["host"] == receiver.url.removeprefix("http://")
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == "job.completed"
    assert payload["data"] == queue.store.get(job_id).model_dump(mode="json")
    wait_until(lambda: settled(queue.redis))


def test_failed_deliveries_are_retried_with_backoff_under_one_id(
    deliverer: Deliverer, receiver: Receiver, queue: JobQueue
) -> None:
    receiver.statuses = [500, 503]
    finished_job(queue, receiver.url)
    requests = receiver.wait_for(lambda r: len(r) >= 3)
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    for request in requests:
        Webhook(SECRET).verify(request.body, request.headers)
    gaps = [later.at - earlier.at for earlier, later in zip(requests, requests[1:], strict=False)]
    assert gaps[0] >= DELAYS[0] - 0.05 and gaps[1] >= DELAYS[1] - 0.05
    wait_until(lambda: settled(queue.redis))
    assert len(receiver.requests) == 3


def test_delivery_is_given_up_after_the_last_delay_and_redirects_are_not_followed(
    deliverer: Deliverer, receiver: Receiver, queue: JobQueue
) -> None:
    receiver.default = 302  # "go to /elsewhere": a failure, not a place to send the job to
    finished_job(queue, receiver.url + "/hook")
    receiver.wait_for(lambda r: len(r) >= 1 + len(DELAYS))
    wait_until(lambda: settled(queue.redis))
    time.sleep(DELAYS[-1])  # nothing comes after giving up
    assert [r.path for r in receiver.requests] == ["/hook"] * (1 + len(DELAYS))


def test_a_hanging_receiver_holds_up_neither_others_nor_more_than_the_timeout(
    deliverer: Deliverer, queue: JobQueue
) -> None:
    with Receiver() as hanging, Receiver() as healthy:
        hanging.hang = 30
        hanging.statuses = [200]
        finished_job(queue, hanging.url)
        hanging.wait_for(lambda r: len(r) >= 1)
        started = time.monotonic()
        finished_job(queue, healthy.url)
        healthy.wait_for(lambda r: len(r) >= 1)
        assert time.monotonic() - started < 1.0  # not behind the hanging one
        # Cut off after webhook_timeout (1 s), then retried after the first delay.
        retried = hanging.wait_for(lambda r: len(r) >= 2, timeout=10)
        assert retried[1].at - retried[0].at < 1.0 + DELAYS[0] + 1.0


def test_private_receivers_are_refused_at_delivery_unless_allowed(
    hook_settings: Settings, redis: Redis, receiver: Receiver, queue: JobQueue
) -> None:
    strict = hook_settings.model_copy(update={"webhook_allow_private": False})
    deliverer = Deliverer.start_if_enabled(strict, redis, queue.store)
    try:
        finished_job(queue, receiver.url)
        wait_until(lambda: settled(redis))  # tried at each delay, refused each time
        assert receiver.requests == []
    finally:
        deliverer.stop()


def test_expired_jobs_are_skipped(
    deliverer: Deliverer, receiver: Receiver, queue: JobQueue
) -> None:
    redis = queue.redis
    redis.zadd(WEBHOOKS_KEY, {"j_GONE|completed|1-0": 0})
    wait_until(lambda: settled(redis))
    finished_job(queue, receiver.url)  # and the next one still goes out
    receiver.wait_for(lambda r: len(r) == 1)


def test_a_record_that_cannot_be_read_is_given_up_not_retried_forever(
    deliverer: Deliverer, receiver: Receiver, queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = new_job_id()
    webhook = JobWebhook(url=receiver.url, events=["completed"])
    queue.accept(job_id, make_params(), "t1", webhook=webhook)
    queue.redis.hset(queue.store.key(job_id), "request", "{not json")  # a bad migration, say
    queue.redis.zadd(WEBHOOKS_KEY, {f"{job_id}|completed|1-0": 0})
    wait_until(lambda: settled(queue.redis))
    assert receiver.requests == []
    assert f"given up after {1 + len(DELAYS)} attempts" in caplog.text


def test_stop_sends_what_is_due_first(
    hook_settings: Settings, redis: Redis, receiver: Receiver, queue: JobQueue
) -> None:
    finished_job(queue, receiver.url)
    Deliverer.start_if_enabled(hook_settings, redis, queue.store).stop()
    assert len(receiver.requests) == 1 and settled(redis)


def test_no_deliverer_without_a_secret(settings: Settings, redis: Redis) -> None:
    assert Deliverer.start_if_enabled(settings, redis, JobStore(redis, 600)) is None


def test_deliveries_resume_after_redis_comes_back(
    hook_settings: Settings, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    proc = start_redis(port, tmp_path / "redis")
    redis = Redis(port=port, socket_timeout=2)
    deliverer = Deliverer.start_if_enabled(hook_settings, redis, JobStore(redis, 600))
    try:
        stop(proc)
        wait_until(lambda: "cannot claim deliveries" in caplog.text)
        proc = start_redis(port, tmp_path / "redis")
        queue = JobQueue(redis, JobStore(redis, 600), job_timeout=30)
        job_id = finished_job(queue, receiver.url)
        (request,) = receiver.wait_for(lambda r: len(r) >= 1)
        assert json.loads(request.body)["data"]["id"] == job_id
    finally:
        deliverer.stop()
        redis.close()
        stop(proc)


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.mark.parametrize("certified", ["localhost", "elsewhere.example"])
def test_https_checks_the_urls_host_while_connecting_to_the_vetted_address(
    hook_settings: Settings, redis: Redis, tmp_path: Path, certified: str
) -> None:
    cert, key = self_signed(tmp_path, certified)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    deliverer = Deliverer(SECRET, hook_settings, redis, JobStore(redis, 600))

    async def send(url: str) -> str | None:
        # Trusts the test certificate as its CA; the name check is TLS's usual one.
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as client:
            return await deliverer.send(client, Delivery(url, "msg-1", "{}"))

    with Receiver(tls=server_tls) as receiver:
        problem = asyncio.run(send(receiver.url + "/hook"))
    if certified == "localhost":
        assert problem is None
        (request,) = receiver.requests
        assert request.headers["host"] == receiver.url.removeprefix("https://")
    else:  # connected to 127.0.0.1, yet the certificate must still be localhost's
        assert problem is not None and "CERTIFICATE_VERIFY_FAILED" in problem
        assert receiver.requests == []
