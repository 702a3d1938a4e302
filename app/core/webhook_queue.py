"""Webhook bookings in Redis: which event of which job is due for delivery when.

The job store's scripts book an event as `ZADD ldm:webhooks <due> "<job_id>|<event>|<stream_id>"`
(due in seconds of Redis' clock); entry `<stream_id>` of the job's event stream holds the
event's fields. A deliverer claims due bookings with a lease, pushing their due time a lease
ahead, so that if it dies mid-send another one sends them once the lease runs out: delivery
is at least once. A failed delivery is booked again after the next of the retry delays, and
dropped after the last."""

from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis

from app.core.jobs import Progress
from app.core.store import JobStore
from app.core.webhooks import EVENT_TYPES, event_body

WEBHOOKS_KEY = "ldm:webhooks"
# Failed deliveries so far, per booking (absent: none).
ATTEMPTS_KEY = "ldm:webhooks:attempts"

# Takes up to ARGV[1] due bookings and pushes them ARGV[2] seconds ahead (the lease).
# Returns member, failures, member, failures, ...
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), member)
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[2], member) or '0'
end
return out
"""

# Counts a failed delivery of booking ARGV[1] and books it again after the next delay of
# ARGV[2..], or drops it after the last. Returns the failures so far, or 0 if the booking is
# gone (delivered by another deliverer after a lease ran out): it is then not booked again.
_RETRY = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local failures = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if failures > #ARGV - 1 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[failures + 1]), ARGV[1])
end
return failures
"""


@dataclass(frozen=True)
class Booking:
    """One event of one job to deliver; `failures` counts the failed deliveries so far."""

    member: str
    failures: int = 0

    @property
    def job_id(self) -> str:
        return self.member.split("|")[0]

    @property
    def event(self) -> str:
        parts = self.member.split("|")
        return parts[1] if len(parts) == 3 else ""

    @property
    def stream_id(self) -> str:
        return self.member.rpartition("|")[2]

    @property
    def msg_id(self) -> str:
        """The `webhook-id`: one per event, the same on every retry of it."""
        return self.member.replace("|", "-")


@dataclass(frozen=True)
class Delivery:
    """What to send for a booking: where, under which id, and the JSON body."""

    url: str
    msg_id: str
    body: str


class WebhookQueue:
    """Claims, acknowledges and retries bookings (see the module's docstring)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._retry = redis.register_script(_RETRY)

    def claim(self, limit: int, lease: float) -> list[Booking]:
        """Up to `limit` bookings due now, each leased to the caller for `lease` seconds."""
        raw = self._claim(keys=[WEBHOOKS_KEY, ATTEMPTS_KEY], args=[limit, lease])
        return [Booking(m.decode(), int(n)) for m, n in zip(raw[::2], raw[1::2], strict=True)]

    def ack(self, booking: Booking) -> None:
        """Forget a booking: delivered, or nothing to deliver any more."""
        with self.redis.pipeline() as pipe:
            pipe.zrem(WEBHOOKS_KEY, booking.member)
            pipe.hdel(ATTEMPTS_KEY, booking.member)
            pipe.execute()

    def retry(self, booking: Booking, delays: list[float]) -> int:
        """Count a failed delivery and book the next try after `delays[failures - 1]`
        seconds; past the last delay the booking is dropped. Returns the failures so far
        (more than `len(delays)`: given up), or 0 if the booking was already delivered."""
        keys = [WEBHOOKS_KEY, ATTEMPTS_KEY]
        return int(self._retry(keys=keys, args=[booking.member, *delays]))


def load_delivery(store: JobStore, booking: Booking) -> Delivery | None:
    """The delivery for a booking, or None when there is nothing to send: the job's record
    has expired, it asked for no webhook, or the booking is malformed. The body carries the
    job as it is now; a progress event carries the step it was booked for."""
    if booking.event not in EVENT_TYPES:
        return None
    url = store.redis.hget(store.key(booking.job_id), "webhook_url")
    job = store.get(booking.job_id)
    if not url or job is None:
        return None
    entries = store.redis.xrange(
        store.events_key(booking.job_id), booking.stream_id, booking.stream_id
    )
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()} if entries else {}
    if booking.event == "progress" and "step" in fields and "total_steps" in fields:
        job.progress = Progress(step=int(fields["step"]), total_steps=int(fields["total_steps"]))
    try:  # a stream id starts with the event's time in ms (Redis' clock)
        at = datetime.fromtimestamp(int(booking.stream_id.split("-")[0]) / 1000, UTC)
    except ValueError:
        at = datetime.now(UTC)
    return Delivery(url.decode(), booking.msg_id, event_body(booking.event, job, at))
