"""Live previews: a small image of each previewed job's current estimate, on its event stream.

The engine's thread only picks which jobs are due and keeps a reference to their estimate;
projecting it to RGB, encoding WebP and writing to Redis happen on a thread of its own, so
denoising never waits for them (see `preview_fit` for why a projection, not the VAE)."""

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from redis import Redis
from redis.exceptions import RedisError

from app.core.settings import Settings
from app.core.store import JobStore
from worker.engine.state import JobState
from worker.families.base import Family
from worker.preview_fit import LatentToRGB, fit

log = logging.getLogger(__name__)

MAX_SIDE = 256  # pixels on a preview's longer side, at most: a few KB of WebP
WEBP_QUALITY = 60

# Appends a preview to each job's stream, only while the job still runs on this worker: a
# preview written after its final state would show a stale picture after `done`, and one from
# a worker that lost the job (its rerun runs elsewhere) a picture of another run. KEYS: job
# keys; ARGV: stream TTL, worker, then step, total and image per key.
PREVIEW = """
for i, key in ipairs(KEYS) do
  local state = redis.call('HMGET', key, 'status', 'worker')
  if state[1] == 'running' and state[2] == ARGV[2] then
    local stream = key .. ':events'
    redis.call('XADD', stream, 'MAXLEN', '~', '200', '*', 'type', 'preview',
               'step', ARGV[3 * i], 'total_steps', ARGV[3 * i + 1], 'image', ARGV[3 * i + 2])
    redis.call('EXPIRE', stream, ARGV[1])
  end
end
return #KEYS
"""


@dataclass(frozen=True)
class Shot:
    """What one preview shows: the first image's latents at a step."""

    latents: torch.Tensor  # (C, h, w), or FLUX's packed (seq, C * 4)
    step: int
    total_steps: int
    width: int
    height: int


class Previews:
    """Sends `preview` events for the active jobs that asked for them, each at most every
    `settings.preview_every` steps and `settings.preview_interval` seconds (the first after
    its first step; none at the last, whose image follows at once)."""

    def __init__(self, redis: Redis, family: Family, settings: Settings, worker: str) -> None:
        self.redis = redis
        self.worker = worker
        self.family = family
        self.settings = settings
        self.projection = _projection(family)
        self._script = redis.register_script(PREVIEW)
        self._last: dict[str, tuple[int, float]] = {}  # job -> step and time of its last preview
        self._lock = threading.Condition()
        self._pending: dict[str, Shot] = {}
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        if self.projection is not None:
            self._thread = threading.Thread(target=self._loop, name="previews", daemon=True)
            self._thread.start()

    def offer(self, active: list[JobState]) -> None:
        """After an iteration: previews for the jobs that are due one (returns at once)."""
        if self.projection is None:
            return
        now = time.monotonic()
        due: dict[str, Shot] = {}
        previewed: set[str] = set()
        for state in active:
            params = state.request.params
            if not params.previews:
                continue
            previewed.add(state.job_id)
            if not 0 < state.index < state.total_steps:
                continue
            last = self._last.get(state.job_id)
            if last is not None and (
                state.index - last[0] < self.settings.preview_every
                or now - last[1] < self.settings.preview_interval
            ):
                continue
            latents = state.estimate if state.estimate is not None else state.latents
            # A reference, not a copy: the engine replaces latents each step, never edits them.
            shot = Shot(latents[0], state.index, state.total_steps, params.width, params.height)
            due[state.job_id] = shot
            self._last[state.job_id] = (state.index, now)
        if len(self._last) > len(previewed):
            self._last = {job: seen for job, seen in self._last.items() if job in previewed}
        if due:
            with self._lock:
                self._pending |= due  # a job's newer preview replaces one not yet sent
                self._lock.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending, then stop."""
        if self._thread is None:
            return
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._pending or self._stopping)
                if not self._pending:
                    return
                shots, self._pending = self._pending, {}
            try:
                self._send(shots)
            except RedisError:
                log.warning("previews not sent")  # Redis is away: later ones will be
            except Exception:
                log.exception("previews not sent")  # the thread lives on

    def _send(self, shots: dict[str, Shot]) -> None:
        args: list[Any] = [self.settings.result_ttl, self.worker]
        for shot in shots.values():
            args += [shot.step, shot.total_steps, self.render(shot)]
        self._script(keys=[JobStore.key(job_id) for job_id in shots], args=args)

    def render(self, shot: Shot) -> str:
        """The preview as a `data:image/webp;base64,` URL at latent resolution (the job's
        aspect ratio; 1/8 of its sides for SD): all the detail a projection holds, and
        encoding more pixels would cost the worker more than the rest of a preview (a 64x64
        WebP takes 4x an 8x8's). Clients scale it up. At most `MAX_SIDE` on its longer side."""
        assert self.projection is not None
        grid = self._grid(shot)
        height, width = grid.shape[-2:]
        scale = min(1.0, MAX_SIDE / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        with torch.inference_mode():
            image = self.projection.image(grid, size)
        buffer = io.BytesIO()
        image.save(buffer, "WEBP", quality=WEBP_QUALITY, method=0)
        return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()

    def _grid(self, shot: Shot) -> torch.Tensor:
        """(C, h, w) latents: FLUX's packed sequence unpacked, as its decode does."""
        if shot.latents.ndim == 3:
            return shot.latents
        pipe: Any = getattr(self.family, "pipe", None)
        scale = getattr(self.family, "vae_scale", 8)
        packed = shot.latents.unsqueeze(0)
        return pipe._unpack_latents(packed, shot.height, shot.width, scale)[0]


def _projection(family: Family) -> LatentToRGB | None:
    """The family's fitted projection; None where it runs no steps (the fallback) or has no
    VAE to fit from (then no previews: jobs run as they would without)."""
    if family.name not in ("unet", "flow"):
        return None
    vae = getattr(getattr(family, "pipe", None), "vae", None)
    if vae is None:
        return None
    try:
        started = time.perf_counter()
        projection = fit(
            vae, vae.config.scaling_factor, vae.config.get("shift_factor", None) or 0.0
        )
        log.debug("preview projection fitted in %.2f s", time.perf_counter() - started)
        return projection
    except Exception:
        log.warning("could not fit a preview projection: no previews", exc_info=True)
        return None
