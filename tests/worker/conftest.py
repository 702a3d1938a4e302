from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from redis import Redis

from app.core.models import model_spec
from app.core.settings import Settings
from app.core.storage import LocalStorage, Storage
from worker.billing import Billing
from worker.engine.state import JobState
from worker.metrics import WorkerMetrics
from worker.pipeline import ResidentPipeline
from worker.serve import Server


@pytest.fixture(scope="session")
def resident(model_cache: Path) -> ResidentPipeline:
    """The random-weight tiny model, loaded once through the same path a real model takes."""
    return ResidentPipeline.load(Settings(model="tiny-sd", model_cache=model_cache, device="cpu"))


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    """Real files, in a folder of the test's own."""
    return LocalStorage(tmp_path / "stored")


ServerFactory = Callable[..., Server]


@pytest.fixture
def make_server(
    settings: Settings, redis: Redis, resident: ResidentPipeline, storage: LocalStorage
) -> ServerFactory:
    """`make_server(max_batch=8, storage=None, metrics=None, billing=None)`: a worker's server
    over the resident tiny-sd, on the test Redis, as `worker.main.serve` builds it. Run it with
    `.serve(burst=True)`: it returns once the queue and the engine are empty."""

    def make(
        max_batch: int = 8,
        storage: Storage | None = None,
        metrics: WorkerMetrics | None = None,
        billing: Billing | None = None,
    ) -> Server:
        spec = model_spec(settings)
        engine = resident.engine(max_batch)
        return Server(settings, spec, engine, redis, storage or default_storage, metrics, billing)

    default_storage = storage
    return make


class Forwards:
    """Stands in for `family.forward`: records the job ids of every denoiser forward.

    `hook(states)` runs first and may raise (a fault) or look around (Redis, RQ) mid-run;
    `tried` lists every forward asked for, `ran` those that went through to the model."""

    def __init__(self, real: Callable[[list[JobState]], list[torch.Tensor]]) -> None:
        self.real = real
        self.hook: Callable[[list[JobState]], None] | None = None
        self.tried: list[list[str]] = []
        self.ran: list[list[str]] = []

    def __call__(self, states: list[JobState]) -> list[torch.Tensor]:
        ids = [state.job_id for state in states]
        self.tried.append(ids)
        if self.hook is not None:
            self.hook(states)
        self.ran.append(ids)
        return self.real(states)

    def with_job(self, job_id: str) -> list[list[str]]:
        """The forwards that ran `job_id`."""
        return [ids for ids in self.ran if job_id in ids]


@pytest.fixture
def forwards(resident: ResidentPipeline) -> Iterator[Forwards]:
    """Every denoiser forward of this test, recorded (see `Forwards`)."""
    family = resident.family
    assert "forward" not in vars(family)  # the class's own method, not a leftover spy
    family.forward = spy = Forwards(family.forward)  # type: ignore[method-assign]
    try:
        yield spy
    finally:
        del family.forward
