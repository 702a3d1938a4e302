"""The resident pipeline on the tiny real model: sizes, seeds, steps, checks, and an engine
that leaves the pipeline as it found it whatever happens to a job."""

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.settings import Settings
from tests.factories import make_params, max_diff
from tests.worker.conftest import Forwards
from worker.engine.state import EngineRequest, JobState
from worker.pipeline import InvalidInput, ResidentPipeline, resolve_device, resolve_dtype


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_output_has_the_requested_size(resident: ResidentPipeline) -> None:
    (image,) = resident.generate(make_params(width=96, height=64))
    assert image.size == (96, 64) and image.mode == "RGB"
    assert resident.native_size == resident.family.native_size == 64


def test_same_seed_same_image_other_seed_other_image(resident: ResidentPipeline) -> None:
    (a,) = resident.generate(make_params(seed=7))
    (b,) = resident.generate(make_params(seed=7))
    (c,) = resident.generate(make_params(seed=8))
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_image_i_of_a_job_is_the_single_image_of_seed_plus_i(resident: ResidentPipeline) -> None:
    batch = resident.generate(make_params(seed=100, num_images=3))
    assert len(batch) == 3
    for i, image in enumerate(batch):
        (alone,) = resident.generate(make_params(seed=100 + i))
        assert max_diff(image, alone) <= 2  # float noise only


def test_the_engine_reports_every_step(resident: ResidentPipeline) -> None:
    engine = resident.engine()
    engine.submit(EngineRequest("job", make_params(num_inference_steps=6)))
    steps = []
    while not engine.idle:
        outcomes = engine.iterate()
        steps.append(outcomes[0].steps if outcomes else engine.progress()["job"][0])
    assert steps == [1, 2, 3, 4, 5, 6]
    assert outcomes[0].ok and len(outcomes[0].images) == 1


def test_image_to_image_runs_strength_times_steps(
    resident: ResidentPipeline, forwards: Forwards
) -> None:
    init = Image.new("RGB", (128, 96), "white")
    params = make_params(
        mode="image-to-image", strength=0.5, num_inference_steps=10, width=64, height=48
    )
    (image,) = resident.generate(params, init)
    assert len(forwards.ran) == 5 and params.denoising_steps == 5
    assert image.size == (64, 48)
    # A low strength stays closer to the init image than a high one.
    (far,) = resident.generate(params.model_copy(update={"strength": 1.0}), init)
    white = np.full((48, 64, 3), 255, dtype=np.int16)
    assert np.abs(pixels(image) - white).mean() < np.abs(pixels(far) - white).mean()


def test_a_job_stopped_mid_run_leaves_the_pipeline_clean(
    resident: ResidentPipeline, forwards: Forwards
) -> None:
    (reference,) = resident.generate(make_params(seed=3))
    engine = resident.engine()
    engine.submit(EngineRequest("canceled", make_params(seed=3, num_inference_steps=8)))
    engine.iterate()
    engine.iterate()
    engine.cancel("canceled")
    (outcome,) = engine.run()
    assert outcome.error == ("canceled", "canceled") and not outcome.images

    def broken(states: list[JobState]) -> None:
        if states[0].job_id == "broken" and states[0].index == 2:
            raise KeyError("bug")

    forwards.hook = broken
    engine.submit(EngineRequest("broken", make_params(seed=3, num_inference_steps=8)))
    (outcome,) = engine.run()
    assert outcome.error is not None and outcome.error[0] == "internal"
    (again,) = resident.generate(make_params(seed=3))
    assert np.array_equal(pixels(reference), pixels(again))


INIT = Image.new("RGB", (64, 64))
IMG2IMG = {"mode": "image-to-image", "strength": 0.5}


@pytest.mark.parametrize(
    ("changes", "init", "message"),
    [
        ({"width": 68}, None, "width must be a multiple of 8"),
        ({"height": 60}, None, "height must be a multiple of 8"),
        (IMG2IMG, None, "image-to-image needs an init image"),
        ({}, INIT, "text-to-image none"),
        (IMG2IMG | {"strength": 0.1}, INIT, "num_inference_steps must be at least 1"),
    ],
)
def test_inputs_are_checked_before_any_work(
    resident: ResidentPipeline,
    forwards: Forwards,
    changes: dict,
    init: Image.Image | None,
    message: str,
) -> None:
    params = make_params(**changes)
    with pytest.raises(InvalidInput, match=message):
        resident.family.check(params, init)
    with pytest.raises(InvalidInput, match=message):
        resident.generate(params, init)
    # A job the engine is handed anyway ends alone, as invalid input, before any forward.
    engine = resident.engine()
    engine.submit(EngineRequest("bad", params, init))
    engine.submit(EngineRequest("good", make_params(num_inference_steps=1)))
    outcomes = {outcome.job_id: outcome for outcome in engine.run()}
    assert outcomes["bad"].error[0] == "invalid_input" and message in outcomes["bad"].error[1]
    assert outcomes["good"].ok
    assert all("bad" not in batch for batch in forwards.tried)


def test_device_and_dtype_choice() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cpu"), "flow") is torch.float32
    assert resolve_dtype("auto", cuda) is torch.float16
    assert resolve_dtype("auto", cuda, "flow") is torch.bfloat16  # SD3/FLUX overflow in fp16
    assert resolve_dtype("bfloat16", cuda) is torch.bfloat16


def test_the_shapes_model_runs_on_one_cpu_thread_unless_told_otherwise() -> None:
    before = torch.get_num_threads()
    try:
        ResidentPipeline.load(Settings(model="tiny-shapes", device="cpu"))
        assert torch.get_num_threads() == 1
        ResidentPipeline.load(Settings(model="tiny-shapes", device="cpu", cpu_threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
