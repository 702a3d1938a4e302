"""Webhooks: the SSRF guard, the signature, the delivery queue and what a delivery carries."""

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from redis import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.core.jobs import ImageInfo, Job, JobStatus, new_job_id
from app.core.jobs import Webhook as JobWebhook
from app.core.queue import JobQueue
from app.core.webhook_queue import (
    ATTEMPTS_KEY,
    WEBHOOKS_KEY,
    Booking,
    WebhookQueue,
    load_delivery,
)
from app.core.webhooks import check_webhook_url, event_body, resolve_targets, signed_headers
from tests.factories import make_params, submitted

SECRET = "whsec_" + base64.b64encode(b"a 32 byte key for the tests 1234").decode()

PRIVATE = [
    "http://127.0.0.1/hook",
    "http://localhost:8080/hook",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://0.0.0.0/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://224.0.0.1/",  # multicast
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped metadata address
    "http://[64:ff9b::a9fe:a9fe]/",  # the metadata address through NAT64
    "http://[2002:7f00:1::1]/",  # 6to4 of loopback
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fec0::1]/",
]
PUBLIC = [
    "https://93.184.215.14/hook",
    "http://93.184.215.14:8080/hook?token=x",
    "https://[2606:4700:4700::1111]/hook",
    "http://[::ffff:5db8:d70e]/",  # IPv4-mapped public address
    "https://[2002:5db8:d70e::1]/",  # 6to4 of a public address
]
MALFORMED = [
    "ftp://93.184.215.14/hook",
    "file:///etc/passwd",
    "gopher://93.184.215.14/",
    "javascript:alert(1)",
    "not a url",
    "http:///hook",
    "https://93.184.215.14:99999/",
    "https://no-such-host.invalid/hook",
    "https://93.184.215.14/" + "a" * 2048,
]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_addresses_are_refused_unless_allowed(url: str) -> None:
    message = check_webhook_url(url, allow_private=False)
    assert message is not None and "not a public address" in message
    assert "LDM_WEBHOOK_ALLOW_PRIVATE=true" in message
    assert check_webhook_url(url, allow_private=True) is None


@pytest.mark.parametrize("url", PUBLIC)
def test_public_addresses_are_accepted(url: str) -> None:
    assert check_webhook_url(url, allow_private=False) is None


@pytest.mark.parametrize("url", MALFORMED)
def test_other_schemes_and_bad_urls_are_refused_even_when_private_is_allowed(url: str) -> None:
    message = check_webhook_url(url, allow_private=True)
    assert message is not None and message.startswith("webhook_url")


def test_delivery_connects_to_the_vetted_address_and_keeps_the_name_for_tls() -> None:
    (target,) = resolve_targets("https://user:pw@localhost:8443/hook?x=1", allow_private=True)
    assert str(target.url) == "https://user:pw@127.0.0.1:8443/hook?x=1"
    assert (target.host_header, target.sni_hostname) == ("localhost:8443", "localhost")
    (target,) = resolve_targets("http://[::1]/hook", allow_private=True)
    assert (str(target.url), target.host_header, target.sni_hostname) == (
        "http://[::1]/hook",
        "[::1]",
        None,
    )


def a_job(status: JobStatus = JobStatus.SUCCEEDED) -> Job:
    return Job(
        id="j_01HZZZZZZZZZZZZZZZZZZZZZZZ",
        status=status,
        model="tiny-sd",
        created_at=datetime.now(UTC),
        request=make_params(prompt="a café at dusk"),
    )


def test_signature_verifies_with_standardwebhooks_and_tampering_fails() -> None:
    job = a_job()
    now = datetime.now(UTC)
    body = event_body("completed", job, now)
    headers = signed_headers(Webhook(SECRET), "msg-1", body, now)
    assert headers["webhook-id"] == "msg-1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    payload = Webhook(SECRET).verify(body.encode(), headers)
    assert payload["type"] == "job.completed"
    assert payload["timestamp"].endswith("Z")
    assert payload["data"] == job.model_dump(mode="json")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("succeeded", "failed").encode(), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.encode(), headers | {"webhook-id": "msg-2"})
    other = "whsec_" + base64.b64encode(b"another key").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body.encode(), headers)


def verify_by_hand(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The hand-written check the README shows (kept in step with it)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    return fresh and any(
        hmac.compare_digest(expected, s.partition(",")[2])
        for s in headers["webhook-signature"].split()
    )


def test_signature_verifies_by_hand_with_hmac() -> None:
    body = event_body("completed", a_job(), datetime.now(UTC))
    headers = signed_headers(Webhook(SECRET), "msg-1", body, datetime.now(UTC))
    assert verify_by_hand(SECRET, headers, body.encode())
    assert not verify_by_hand(SECRET, headers, body.encode() + b" ")


# The delivery queue, with bookings written by hand as the job store's scripts write them.


def redis_now(redis: Redis) -> float:
    seconds, micros = redis.time()
    return seconds + micros / 1e6


def book(redis: Redis, member: str, due_in: float = -1) -> None:
    redis.zadd(WEBHOOKS_KEY, {member: redis_now(redis) + due_in})


def claim_within(queue: WebhookQueue, timeout: float = 5) -> list[Booking]:
    """Poll until something is due."""
    deadline = time.monotonic() + timeout
    while not (claimed := queue.claim(10, lease=30)):
        assert time.monotonic() < deadline, "nothing became due"
        time.sleep(0.02)
    return claimed


def test_claim_takes_due_bookings_and_leases_them(redis: Redis) -> None:
    queue = WebhookQueue(redis)
    book(redis, "j_A|completed|1-0")
    book(redis, "j_B|completed|2-0", due_in=100)
    started = time.monotonic()
    assert queue.claim(10, lease=0.3) == [Booking("j_A|completed|1-0", 0)]
    assert queue.claim(10, lease=0.3) == []  # leased: nobody else sends it meanwhile
    # A deliverer that died mid-send lets another one send it once the lease runs out.
    assert claim_within(queue) == [Booking("j_A|completed|1-0", 0)]
    assert time.monotonic() - started >= 0.25


def test_claim_takes_at_most_limit(redis: Redis) -> None:
    queue = WebhookQueue(redis)
    for n in range(3):
        book(redis, f"j_{n}|completed|{n}-0")
    assert len(queue.claim(2, lease=30)) == 2
    assert len(queue.claim(2, lease=30)) == 1
    assert queue.claim(2, lease=30) == []


def test_retry_backs_off_then_gives_up(redis: Redis) -> None:
    queue = WebhookQueue(redis)
    book(redis, "j_A|progress|1-0")
    delays = [0.2, 0.4]
    (booking,) = queue.claim(10, lease=30)
    for failures, delay in enumerate(delays, start=1):
        failed_at = time.monotonic()
        assert queue.retry(booking, delays) == failures
        assert queue.claim(10, lease=30) == []
        (booking,) = claim_within(queue)
        assert booking.failures == failures
        assert time.monotonic() - failed_at >= delay - 0.05
    assert queue.retry(booking, delays) == 3  # past the last delay: dropped
    assert redis.zcard(WEBHOOKS_KEY) == 0 and not redis.exists(ATTEMPTS_KEY)


def test_ack_forgets_a_booking_and_a_late_retry_does_not_book_it_again(redis: Redis) -> None:
    queue = WebhookQueue(redis)
    book(redis, "j_A|completed|1-0")
    (booking,) = queue.claim(10, lease=30)
    queue.retry(booking, [0])
    (booking,) = claim_within(queue)
    queue.ack(booking)
    assert redis.zcard(WEBHOOKS_KEY) == 0 and not redis.exists(ATTEMPTS_KEY)
    assert queue.retry(booking, [0]) == 0  # another deliverer's late failure
    assert redis.zcard(WEBHOOKS_KEY) == 0


# What a delivery carries, from bookings the job store makes as the job moves on.

HOOK = "https://93.184.215.14/hook"


def job_with_webhook(queue: JobQueue, events: list[str], url: str = HOOK) -> str:
    job_id = new_job_id()
    queue.accept(job_id, make_params(), "t1", webhook=JobWebhook(url=url, events=events))
    return job_id


def booked(redis: Redis) -> list[Booking]:
    return [Booking(m.decode()) for m in redis.zrange(WEBHOOKS_KEY, 0, -1)]


def test_completed_delivery_carries_the_job_as_clients_see_it(queue: JobQueue) -> None:
    store = queue.store
    job_id = job_with_webhook(queue, ["completed"])
    store.start(job_id, total_steps=4)
    assert booked(queue.redis) == []  # not subscribed to start
    image = ImageInfo(url="/x", width=64, height=64, seed=1, content_type="image/png")
    store.succeed(job_id, [image])
    (booking,) = booked(queue.redis)
    assert (booking.job_id, booking.event) == (job_id, "completed")
    delivery = load_delivery(store, booking)
    assert delivery.url == HOOK
    assert delivery.msg_id == f"{job_id}-completed-{booking.stream_id}"
    payload = json.loads(delivery.body)
    assert payload["type"] == "job.completed"
    assert payload["data"] == store.get(job_id).model_dump(mode="json")
    assert payload["data"]["status"] == "succeeded" and payload["data"]["images"]
    sent_at = datetime.fromisoformat(payload["timestamp"])
    assert abs(sent_at.timestamp() - redis_now(queue.redis)) < 5


def test_start_and_progress_deliveries_carry_their_event(queue: JobQueue) -> None:
    store = queue.store
    job_id = job_with_webhook(queue, ["start", "progress"])
    store.start(job_id, total_steps=4)
    store.report_progress([job_id], 1)
    store.report_progress([job_id], 2)  # within a second of the first: not booked
    store.report_progress([job_id], 4)  # the last step always is
    bookings = booked(queue.redis)
    assert [b.event for b in bookings] == ["start", "progress", "progress"]
    payloads = [json.loads(load_delivery(store, b).body) for b in bookings]
    assert [p["type"] for p in payloads] == ["job.started", "job.progress", "job.progress"]
    assert [p["data"]["progress"]["step"] for p in payloads[1:]] == [1, 4]
    assert all(p["data"]["id"] == job_id for p in payloads)


def test_nothing_to_deliver_for_expired_jobs_or_bad_bookings(queue: JobQueue) -> None:
    without_url = submitted(queue, make_params())
    assert load_delivery(queue.store, Booking(f"{without_url}|completed|1-0")) is None
    expired = job_with_webhook(queue, ["completed"])
    queue.redis.delete(queue.store.key(expired))
    assert load_delivery(queue.store, Booking(f"{expired}|completed|1-0")) is None
    fine = job_with_webhook(queue, ["completed"])
    assert load_delivery(queue.store, Booking(f"{fine}|completed|1-0")) is not None
    assert load_delivery(queue.store, Booking(f"{fine}|exploded|1-0")) is None
    assert load_delivery(queue.store, Booking(f"{fine}")) is None
