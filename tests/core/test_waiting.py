"""Who runs next, against a real Redis: priority bands, weighted fair share between tenants,
caps, and positions that say how many jobs will start first."""

from collections import Counter
from collections.abc import Callable
from functools import partial

from app.core.jobs import JobParams, new_job_id
from app.core.policy import job_cost
from app.core.queue import JobQueue, rq_queue
from app.core.recovery import retry_lost
from app.core.store import Claim
from tests.factories import make_params

MODEL = "tiny-sd"


def submit(queue: JobQueue, tenant: str, n: int = 1, weight: float = 1.0, **changes) -> list[str]:
    """`n` jobs of `tenant`, submitted as the API does (cost over the tenant's weight)."""
    params = make_params(**changes)
    ids = [new_job_id() for _ in range(n)]
    for job_id in ids:
        queue.submit(job_id, params, tenant, share=job_cost(params) / weight)
    return ids


def take(queue: JobQueue, n: int, worker: str = "w1", cap: int | None = None) -> list[str]:
    """What a worker takes next: the head of the line, claimed."""
    key = rq_queue(queue.redis, MODEL).key
    head = queue.waiting.head(MODEL, n)
    return queue.store.claim(worker, [Claim(j, j, key, 4, cap) for j in head]) if head else []


def test_a_late_tenant_goes_ahead_of_a_flood(queue: JobQueue) -> None:
    flood = submit(queue, "a", 20)
    assert take(queue, 4) == flood[:4]
    late = submit(queue, "b", 3)
    # Each of b's jobs waits for at most one more of a's.
    order = queue.waiting.head(MODEL, 30)
    assert [order.index(j) for j in late] == [0, 2, 4]
    assert [queue.position(j, MODEL) for j in late] == [0, 2, 4]
    assert queue.position(flood[4], MODEL) == 1
    assert take(queue, 3) == [late[0], flood[4], late[1]]


def test_weights_share_a_model_in_proportion(queue: JobQueue) -> None:
    heavy = submit(queue, "heavy", 30, weight=2)
    light = submit(queue, "light", 30, weight=1)
    first = queue.waiting.head(MODEL, 30)
    assert sum(j in heavy for j in first) == 20 and sum(j in light for j in first) == 10


def test_cost_counts_steps_and_size(queue: JobQueue) -> None:
    # One 8-step job of a weighs what two 4-step jobs of b do.
    long = submit(queue, "a", 3, num_inference_steps=8)
    short = submit(queue, "b", 6, num_inference_steps=4)
    order = queue.waiting.head(MODEL, 9)
    assert order == [long[0], short[0], short[1], long[1], short[2], short[3], long[2]] + short[4:]


def test_an_idle_tenant_banks_no_credit(queue: JobQueue) -> None:
    submit(queue, "a", 6)
    take(queue, 6)
    # b was idle while a ran 6 jobs; now both flood. b does not get 6 first: it is one job
    # ahead (a's last job started just now), then they alternate.
    b = submit(queue, "b", 4)
    a = submit(queue, "a", 4)
    assert queue.waiting.head(MODEL, 8) == [b[0], b[1], a[0], b[2], a[1], b[3], a[2], a[3]]


def test_bands_are_strict_and_positions_count_higher_bands(queue: JobQueue) -> None:
    normal = submit(queue, "a", 3)
    low = submit(queue, "b", 1, priority="low")
    high = submit(queue, "c", 2, priority="high")
    assert queue.waiting.head(MODEL, 10) == high + normal + low
    assert queue.position(low[0], MODEL, priority="low") == 5
    assert queue.position(normal[0], MODEL, priority="normal") == 2
    assert queue.position(high[1], MODEL, priority="high") == 1


def test_a_tenant_at_its_running_cap_is_passed_over_atomically(queue: JobQueue) -> None:
    a = submit(queue, "a", 3)
    b = submit(queue, "b", 1)
    key = rq_queue(queue.redis, MODEL).key
    claims = [Claim(j, j, key, 4, 2 if j in a else None) for j in queue.waiting.head(MODEL, 4)]
    # Two of a's start; its third stays in line, in its place, while b's goes.
    assert set(queue.store.claim("w1", claims)) == {a[0], a[1], b[0]}
    assert queue.waiting.head(MODEL, 4) == [a[2]]
    assert queue.waiting.tenant_counts(["a", "b"], running=True) == {"a": 2, "b": 1}
    queue.store.succeed(a[0], [], worker="w1")
    assert queue.waiting.tenant_counts(["a"], running=True) == {"a": 1}
    assert take(queue, 1, cap=2) == [a[2]]


def test_leaving_the_line_cancel_and_rerun(queue: JobQueue) -> None:
    first, second = submit(queue, "a", 2)
    queue.cancel(second, MODEL)
    assert queue.position(second, MODEL) is None
    assert queue.waiting.tenant_counts(["a"], running=False) == {"a": 1}
    assert take(queue, 1, worker="w-dead") == [first]
    later = submit(queue, "b", 3)
    # A job whose worker died runs again at the front of its band: it waited once already.
    params: JobParams = queue.store.get(first).request
    assert retry_lost(queue, first, params, "w-dead", max_attempts=3) == "requeued"
    assert queue.waiting.head(MODEL, 4) == [f"{first}-2", *later]
    assert queue.position(first, MODEL, attempt=2) == 0
    assert queue.waiting.tenant_counts(["a"], running=True) == {"a": 0}


def commands_run(queue: JobQueue, call: Callable[[], object]) -> Counter[str]:
    """The Redis commands `call` made, by name, from the server's own counts."""

    def counts() -> Counter[str]:
        stats = queue.redis.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
        return Counter({name: n for name, n in calls.items() if name != "info"})

    before = counts()
    call()
    return counts() - before


def test_a_position_costs_the_same_whatever_the_queue_length(queue: JobQueue) -> None:
    # Every follower of a queued job's event stream asks once a second: the lookup must not
    # walk the queue (no LPOS, no ranges), just O(log n) ranks and counts.
    costs = []
    for waiting in (5, 500):
        queue.redis.flushdb()
        ids = submit(queue, "a", waiting, priority="low")
        submit(queue, "b", 3, priority="high")
        costs.append(commands_run(queue, partial(queue.position, ids[-1], MODEL, priority="low")))
        assert queue.position(ids[-1], MODEL, priority="low") == 3 + waiting - 1
    assert costs[0] == costs[1] == Counter({"zcard": 2, "zrank": 1})
