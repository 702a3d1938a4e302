"""What route handlers depend on, built once per app by `create_app`."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from app.api.metrics import Metrics
from app.core.models import ModelSpec
from app.core.queue import JobQueue
from app.core.settings import Settings
from app.core.storage import Storage
from app.core.store import JobStore
from app.core.workers import WorkerRegistry


@dataclass
class Services:
    """The app's connections and collaborators; one instance per app, none global."""

    settings: Settings
    redis: Redis
    store: JobStore
    queue: JobQueue
    storage: Storage
    models: dict[str, ModelSpec]
    default_model: str
    metrics: Metrics
    workers: WorkerRegistry


def get_services(request: Request) -> Services:
    """The services of the app serving this request."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
