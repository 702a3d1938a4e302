"""Running out of memory: how to tell, how to give memory back, and decoding in tiles as the
last resort for one job's VAE decode."""

import gc
import logging

import torch

from worker.engine.state import JobState, Outcome
from worker.families.base import Family

log = logging.getLogger(__name__)

OUT_OF_MEMORY = ("out_of_memory", "not enough memory; ask for fewer, smaller images")
INTERNAL = ("internal", "the worker failed to run the job")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; CPU allocators a plain RuntimeError."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def free_memory(device: torch.device) -> None:
    """Give cached accelerator memory back after an out-of-memory error."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def decode_in_tiles(family: Family, state: JobState) -> list[Outcome] | None:
    """Out of memory decoding one job: decode it in tiles (which changes the picture
    slightly, so the job says so); None where tiling is not possible or already on."""
    vae = getattr(getattr(family, "pipe", None), "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling") or getattr(vae, "use_tiling", True):
        return None
    vae.enable_tiling()
    try:
        (images,) = family.decode([state])
    except Exception:
        log.warning("could not decode job %s in tiles either", state.job_id, exc_info=True)
        return None
    finally:
        vae.disable_tiling()
    state.warnings.append(
        "the VAE ran out of memory and decoded in tiles, which changes the picture slightly"
    )
    return [state.outcome(images)]
