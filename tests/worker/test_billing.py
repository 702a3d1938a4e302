"""What a worker books: each job's steps and its share of the engine's time (a batch's time
split by rows) to its tenant, and each success to the exact-result cache under the weights
it ran."""

import shutil
from pathlib import Path

import pytest
import torch
from redis import Redis

from app.core.jobs import new_job_id
from app.core.queue import JobQueue
from app.core.result_cache import Hit, ResultCache
from app.core.usage import Usage, today
from tests.factories import cancel_at_step, make_params
from tests.worker.conftest import ServerFactory
from worker.billing import Billing
from worker.engine.state import EngineRequest
from worker.pipeline import ResidentPipeline
from worker.weights_version import weights_version


def test_a_batchs_time_is_shared_by_its_rows(resident: ResidentPipeline) -> None:
    engine = resident.engine(max_batch=8)
    # Same size and steps: they share every forward; guided, so two rows an image.
    engine.submit(EngineRequest("two", make_params(num_images=2, seed=1)))
    engine.submit(EngineRequest("one", make_params(num_images=1, seed=3)))
    spent = {o.job_id: o.worker_s for o in engine.run()}
    assert spent["one"] > 0
    assert spent["two"] == pytest.approx(2 * spent["one"], rel=1e-9)


def test_a_job_alone_pays_for_all_its_steps(resident: ResidentPipeline) -> None:
    engine = resident.engine(max_batch=8)
    engine.submit(EngineRequest("short", make_params(num_inference_steps=2)))
    engine.submit(EngineRequest("long", make_params(num_inference_steps=8, seed=9)))
    outcomes = {o.job_id: o for o in engine.run()}
    assert (outcomes["short"].steps, outcomes["long"].steps) == (2, 8)
    # Six steps ran for "long" alone: it used more of the engine than its batch-mate.
    assert outcomes["long"].worker_s > outcomes["short"].worker_s > 0


def submit_stamped(queue: JobQueue, cache: ResultCache, params, tenant: str = "t1") -> str:
    """Submit as the API does with the cache on: the record names the entry to register."""
    entry = cache.look_up(tenant, params, [])
    assert entry is not None and not isinstance(entry, Hit)
    job_id = new_job_id()
    queue.accept(job_id, params, tenant, cache=entry)
    return job_id


def test_the_worker_books_usage_and_registers_results(
    queue: JobQueue, redis: Redis, make_server: ServerFactory, resident: ResidentPipeline
) -> None:
    usage, cache = Usage(redis), ResultCache(redis, queue.store)
    billing = Billing(usage, cache, "tiny-sd", resident.version)
    billing.publish()
    done = submit_stamped(queue, cache, make_params(num_images=2, num_inference_steps=4))
    stopped = submit_stamped(queue, cache, make_params(seed=5, num_inference_steps=12))
    server = make_server(max_batch=8, billing=billing)
    cancel_at_step(queue, stopped, step=3, store=server.store)
    server.serve(burst=True)
    assert queue.store.get(done).status == "succeeded"
    assert queue.store.get(stopped).status == "canceled"

    (row,) = usage.report("t1", today(), today()).days
    assert (row.model, row.jobs, row.images, row.cached_jobs) == ("tiny-sd", 2, 2, 0)
    # The canceled job is billed the steps it ran: at least those its record last showed
    # (progress writes coalesce), fewer than it asked for.
    shown = queue.store.get(stopped).progress.step
    assert 3 <= shown <= row.steps - 4 < 12
    assert row.worker_seconds > 0
    # The success is its request's entry now; the canceled job left none.
    hit = cache.look_up("t1", make_params(num_images=2, num_inference_steps=4), [])
    assert isinstance(hit, Hit) and hit.job_id == done
    missed = cache.look_up("t1", make_params(seed=5, num_inference_steps=12), [])
    assert not isinstance(missed, Hit)


def test_the_weights_version_follows_bytes_dtype_and_device(
    resident: ResidentPipeline, model_cache: Path, tmp_path: Path
) -> None:
    (folder,) = [p for p in model_cache.iterdir() if p.is_dir() and "tiny" in p.name]
    assert weights_version(folder, resident.pipe, torch.float32) == resident.version
    assert weights_version(folder, resident.pipe, torch.float16) != resident.version
    changed = shutil.copytree(folder, tmp_path / "copy")
    (weights, *_) = sorted(changed.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_version(changed, resident.pipe, torch.float32) != resident.version
    # Loaded from a hub id (no folder): the tensors themselves are hashed.
    by_tensors = weights_version("some/hub-id", resident.pipe, torch.float32)
    assert by_tensors == weights_version("other/hub-id", resident.pipe, torch.float32)
    assert len(by_tensors) == 32
