"""LoRA stacks in the step engine: jobs with different adapter stacks share forwards, and each
job's images equal diffusers' own pipeline for that job alone with `load_lora_weights` and
`set_adapters` at the same scales (max pixel difference <= 2, fp32 CPU: the batched sums and
the low-rank deltas add in another order, see tests/worker/test_lora_batched.py). Loading
runs beside the engine: a job waiting for its adapter holds up no other."""

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline

from app.core.jobs import JobParams, LoraUse
from tests.factories import make_params, max_difference
from tests.worker.lora_files import (
    KOHYA_SD,
    diffusers_file,
    kohya_file,
    peft_021_with_transformers_5,  # noqa: F401 (autouse)
    reference,
)
from worker.engine.loop import Engine
from worker.engine.state import EngineRequest, Outcome
from worker.families import load_family
from worker.tiny_model import ensure_tiny_model

CPU = torch.device("cpu")
TOLERANCE = 2


pytestmark = pytest.mark.usefixtures("single_thread")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tiny-sd twice (served, reference) and two adapters: A (diffusers format, U-Net and
    text encoder), B (kohya, with LoCon convs)."""
    folder = ensure_tiny_model(model_cache)
    served, ref = (DiffusionPipeline.from_pretrained(folder) for _ in range(2))
    files_dir = tmp_path_factory.mktemp("adapters")
    files = {
        "style": diffusers_file(served, files_dir / "a"),
        "detail": kohya_file(files_dir / "b.safetensors", KOHYA_SD),
    }
    for pipe in (served, ref):
        pipe.set_progress_bar_config(disable=True)
    return {"served": served, "ref": reference(ref, files), "files": files}


def use(setup: dict[str, Any], name: str, scale: float) -> LoraUse:
    return LoraUse(name=name, scale=scale, sha256=sha256(setup["files"][name]))


def family_of(setup: dict[str, Any], files: dict[str, Path] | None = None) -> Any:
    files = files or setup["files"]

    def find(name: str, digest: str) -> Path | None:
        path = files.get(name)
        return path if path is not None and sha256(path) == digest else None

    return load_family(setup["served"], CPU, loras=(find, 2**30))


def diffusers_images(setup: dict[str, Any], params: JobParams) -> list:
    ref = setup["ref"]
    if params.loras:
        ref.enable_lora()
        ref.set_adapters([u.name for u in params.loras], [u.scale for u in params.loras])
    else:
        ref.disable_lora()
    n = params.num_images
    return ref(
        prompt=[params.prompt] * n,
        negative_prompt=[params.negative_prompt] * n if params.negative_prompt else None,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        height=params.height,
        width=params.width,
        generator=[torch.Generator("cpu").manual_seed(params.seed + i) for i in range(n)],
    ).images


def run(engine: Engine, jobs: dict[str, JobParams], late: dict[str, JobParams]) -> dict:
    outcomes: list[Outcome] = []
    for job_id, params in jobs.items():
        engine.submit(EngineRequest(job_id, params))
    for _ in range(3):
        outcomes += engine.iterate()
    for job_id, params in late.items():
        engine.submit(EngineRequest(job_id, params))
    outcomes += engine.run()
    return {o.job_id: o for o in outcomes}


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # the 2nd reference adapter
def test_jobs_with_different_stacks_share_forwards_and_each_equals_diffusers(
    setup: dict[str, Any],
) -> None:
    family = family_of(setup)
    jobs = {
        "base": make_params(seed=1, num_images=2),
        "style": make_params(seed=2, loras=(use(setup, "style", 0.8),)),
        "both": make_params(
            seed=3,
            negative_prompt="blurry",
            loras=(use(setup, "style", 0.5), use(setup, "detail", -1.0)),
        ),
    }
    late = {"detail": make_params(seed=4, guidance_scale=1.0, loras=(use(setup, "detail", 1.5),))}
    forwards: list[set[str]] = []
    real = family.forward
    family.forward = lambda states: (forwards.append({s.job_id for s in states}), real(states))[1]
    # Load both adapters first, so that every job starts at once.
    for params in (jobs["both"],):
        while not family.ready(EngineRequest("warm", params)):
            threading.Event().wait(0.01)
    outcomes = run(Engine(family), jobs, late)
    assert set(jobs) <= forwards[0]  # one forward, three stacks
    assert any(set(jobs) | set(late) == f for f in forwards)  # the late one joined them
    for job_id, params in (jobs | late).items():
        assert outcomes[job_id].ok, outcomes[job_id].error
        theirs = diffusers_images(setup, params)
        assert max_difference(outcomes[job_id].images, theirs) <= TOLERANCE, job_id
    # The adapters do change the pictures (by far more than the tolerance).
    plain = diffusers_images(setup, jobs["style"].model_copy(update={"loras": ()}))
    assert max_difference(outcomes["style"].images, plain) > 20


def test_a_job_waiting_for_its_adapter_holds_up_no_other(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    # A copy of the file under a new name: never loaded before, so the store must read it.
    fresh = tmp_path / "slow.safetensors"
    fresh.write_bytes(setup["files"]["detail"].read_bytes())
    family = family_of(setup, {"slow": fresh})
    gate = threading.Event()
    store = family.adapters.store
    loader = store._loader
    store._loader = lambda **kwargs: (gate.wait(30), loader(**kwargs))[1]
    engine = Engine(family)
    slow = make_params(seed=5, loras=(LoraUse(name="slow", scale=1.0, sha256=sha256(fresh)),))
    engine.submit(EngineRequest("slow", slow))
    engine.submit(EngineRequest("plain", make_params(seed=6)))
    done: dict[str, Outcome] = {}
    while "plain" not in done:
        done |= {o.job_id: o for o in engine.iterate()}
    assert "slow" not in done and [r.job_id for r in engine.pending] == ["slow"]
    gate.set()
    done |= {o.job_id: o for o in engine.run()}
    assert done["slow"].ok and done["plain"].ok


def test_an_adapter_gone_from_the_registry_fails_its_job_alone(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    family = family_of(setup, {})
    stale = make_params(loras=(LoraUse(name="style", scale=1.0, sha256="0" * 64),))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    family = family_of(setup, {"broken": broken})
    bad = make_params(loras=(LoraUse(name="broken", scale=1.0, sha256=sha256(broken)),))
    engine = Engine(family)
    for job_id, params in (("stale", stale), ("bad", bad), ("ok", make_params())):
        engine.submit(EngineRequest(job_id, params))
    outcomes = {o.job_id: o for o in engine.run()}
    assert outcomes["ok"].ok
    assert outcomes["stale"].error[0] == "invalid_input"
    assert "no longer in the registry" in outcomes["stale"].error[1]
    assert outcomes["bad"].error[0] == "invalid_input"
    assert "could not be loaded" in outcomes["bad"].error[1]


def test_adapters_of_a_text_encoder_key_the_prompt_cache(setup: dict[str, Any]) -> None:
    family = family_of(setup)
    params = make_params(seed=8, loras=(use(setup, "style", 1.0),))
    base = params.model_copy(update={"loras": ()})
    outcomes = run(Engine(family), {"lora": params, "base": base}, {})
    # Same prompt, two embeddings: the base one and the one through the adapted encoder.
    keys = list(family.texts.prompts._kept)
    assert {key[0] for key in keys} == {params.prompt, ""}
    assert len({key for key in keys if key[0] == params.prompt}) == 2
    assert max_difference(outcomes["lora"].images, diffusers_images(setup, params)) <= TOLERANCE
