"""Delivers the webhooks jobs booked, on a thread of its own: a job never waits on a receiver.

The thread runs a small asyncio loop: it claims due bookings (as many as it has free slots)
and sends each under a hard deadline of `webhook_timeout` seconds, whatever the receiver
does (slow DNS, a trickled answer). A 2xx answer is a delivery; anything else is retried
after the next of `webhook_retry_delays`, then dropped. Nothing here can fail a job: errors
are logged, and while Redis is away a booking stays leased, to be sent again once the lease
runs out (by this worker or any other)."""

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
from redis import Redis
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from app.core.logs import bind
from app.core.settings import Settings
from app.core.store import JobStore
from app.core.webhook_queue import Booking, Delivery, WebhookQueue, load_delivery
from app.core.webhooks import WebhookRefused, resolve_targets, signed_headers

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often an idle deliverer looks for due bookings
IN_FLIGHT = 8  # deliveries at once: slow receivers hold a slot at most `webhook_timeout`
USER_AGENT = "ldm-serve-webhooks/1"


class Deliverer:
    """Sends due webhooks until stopped; see the module's docstring."""

    def __init__(self, secret: str, settings: Settings, redis: Redis, store: JobStore) -> None:
        self.signer = Webhook(secret)
        self.queue = WebhookQueue(redis)
        self.store = store
        self.allow_private = settings.webhook_allow_private
        self.timeout = settings.webhook_timeout
        self.delays = list(settings.webhook_retry_delays)
        # Long enough that a live deliverer always finishes (or retries) first.
        self.lease = 2 * self.timeout + 30
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    @classmethod
    def start_if_enabled(
        cls, settings: Settings, redis: Redis, store: JobStore
    ) -> "Deliverer | None":
        """A started deliverer, or None when no webhook secret is set (nothing is booked then)."""
        if settings.webhook_secret is None:
            return None
        deliverer = cls(settings.webhook_secret.get_secret_value(), settings, redis, store)
        deliverer._thread.start()
        return deliverer

    def stop(self) -> None:
        """Send what is due now, wait for deliveries in flight (each is bounded), then stop."""
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    def _run(self) -> None:
        try:
            asyncio.run(self._loop())
        except Exception:  # never take the worker down; the bookings wait for another one
            log.exception("webhook deliveries stopped")

    async def _loop(self) -> None:
        # Redis calls and DNS lookups block: threads enough that each delivery has one and
        # claiming still gets one while every delivery waits on a slow resolver.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(IN_FLIGHT + 2))
        in_flight: set[asyncio.Task] = set()
        redis_down = False
        async with httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            trust_env=False,  # a proxy would connect to the name again, not the vetted address
            # A fresh connection per delivery: a pooled one would carry another host's TLS.
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": USER_AGENT},
        ) as client:
            while True:
                stopping = self._stop.is_set()  # one last claim after a stop: flush what is due
                free = IN_FLIGHT - len(in_flight)
                claimed: list[Booking] = []
                if free:
                    try:
                        claimed = await asyncio.to_thread(self.queue.claim, free, self.lease)
                        redis_down = False
                    except Exception:  # Redis away (a restart, a failover): wait it out
                        if not redis_down:
                            log.warning(
                                "webhooks: cannot claim deliveries; retrying", exc_info=True
                            )
                        redis_down = True
                for booking in claimed:
                    task = asyncio.create_task(self._deliver(client, booking))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if stopping:
                    break
                if in_flight and len(claimed) == free:  # full: wait for a slot (or the poll)
                    await asyncio.wait(
                        set(in_flight), timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED
                    )
                else:  # nothing more is due now
                    await asyncio.sleep(1 if redis_down else POLL_S)
            if in_flight:
                # Each is bounded by the timeout; leftovers stay leased and are sent again.
                await asyncio.wait(set(in_flight), timeout=self.timeout + 1)

    async def _deliver(self, client: httpx.AsyncClient, booking: Booking) -> None:
        bind(job_id=booking.job_id)
        try:
            problem = await self._attempt(client, booking)
            if problem is None:
                await asyncio.to_thread(self.queue.ack, booking)
                return
            failures = await asyncio.to_thread(self.queue.retry, booking, self.delays)
            if failures > len(self.delays):
                log.warning(
                    "webhook %s given up after %d attempts: %s", booking.msg_id, failures, problem
                )
            elif failures:
                log.info(
                    "webhook %s failed (%s); retry %d in %g s",
                    booking.msg_id,
                    problem,
                    failures,
                    self.delays[failures - 1],
                )
        except Exception:  # Redis away: the lease brings the booking back later
            log.warning("webhook %s: delivery interrupted", booking.msg_id, exc_info=True)

    async def _attempt(self, client: httpx.AsyncClient, booking: Booking) -> str | None:
        """Send a booking's event; None when done with it (delivered, or nothing to send
        any more: the job expired), else what failed."""
        try:
            delivery = await asyncio.to_thread(load_delivery, self.store, booking)
            if delivery is None:
                return None
            return await self.send(client, delivery)
        except RedisError:
            raise
        except Exception as exc:  # a record it cannot read...: a failed try, so it ends
            log.warning("webhook %s cannot be sent", booking.msg_id, exc_info=True)
            return f"{type(exc).__name__}: {exc}"

    async def send(self, client: httpx.AsyncClient, delivery: Delivery) -> str | None:
        """POST `delivery` to its vetted address(es); None once delivered, else what failed."""
        try:
            async with asyncio.timeout(self.timeout):
                # Authoritative SSRF check, at the time of sending and against the address
                # connected to (DNS may answer differently than it did at submit).
                targets = await asyncio.to_thread(resolve_targets, delivery.url, self.allow_private)
                headers = signed_headers(
                    self.signer, delivery.msg_id, delivery.body, datetime.now(UTC)
                )
                problem = "no address"
                for target in targets:
                    request = client.build_request(
                        "POST",
                        target.url,
                        content=delivery.body.encode(),
                        headers=headers | {"host": target.host_header},
                        extensions={"sni_hostname": target.sni_hostname}
                        if target.sni_hostname
                        else {},
                    )
                    try:
                        response = await client.send(request, stream=True)
                    except httpx.ConnectError as exc:  # try the next address
                        problem = f"cannot connect ({exc})"
                        continue
                    await response.aclose()  # the answer's body is not needed
                    if response.is_success:
                        return None
                    return f"HTTP {response.status_code}"
                return problem
        except WebhookRefused as exc:
            return str(exc)
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
