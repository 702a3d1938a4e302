"""The resident pipeline on the tiny real model: seeds, batches, steps, cancel, checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.settings import Settings
from tests.factories import make_params
from worker.pipeline import InvalidInput, ResidentPipeline, resolve_device, resolve_dtype


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class Stop(Exception):
    pass


def test_output_has_the_requested_size(resident: ResidentPipeline) -> None:
    (image,) = resident.generate(make_params(width=96, height=64))
    assert image.size == (96, 64) and image.mode == "RGB"


def test_same_seed_same_image_other_seed_other_image(resident: ResidentPipeline) -> None:
    (a,) = resident.generate(make_params(seed=7))
    (b,) = resident.generate(make_params(seed=7))
    (c,) = resident.generate(make_params(seed=8))
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_image_i_of_a_batch_is_the_single_image_of_seed_plus_i(resident: ResidentPipeline) -> None:
    batch = resident.generate(make_params(seed=100, num_images=3))
    for i, image in enumerate(batch):
        (alone,) = resident.generate(make_params(seed=100 + i))
        assert np.abs(pixels(image) - pixels(alone)).max() <= 2  # float noise only


def test_step_callback_sees_every_step(resident: ResidentPipeline) -> None:
    steps: list[int] = []
    resident.generate(make_params(num_inference_steps=6), on_step=steps.append)
    assert steps == [1, 2, 3, 4, 5, 6]


def test_image_to_image_runs_strength_times_steps(resident: ResidentPipeline) -> None:
    init = Image.new("RGB", (128, 96), "white")
    params = make_params(
        mode="image-to-image", strength=0.5, num_inference_steps=10, width=64, height=48
    )
    steps: list[int] = []
    (image,) = resident.generate(params, init, on_step=steps.append)
    assert steps == [1, 2, 3, 4, 5] and params.denoising_steps == 5
    assert image.size == (64, 48)
    # A low strength stays closer to the init image than a high one.
    (far,) = resident.generate(params.model_copy(update={"strength": 1.0}), init)
    white = np.full((48, 64, 3), 255, dtype=np.int16)
    assert np.abs(pixels(image) - white).mean() < np.abs(pixels(far) - white).mean()


def test_stopping_mid_run_leaves_the_pipeline_clean(resident: ResidentPipeline) -> None:
    (reference,) = resident.generate(make_params(seed=3))

    def stop_at_two(step: int) -> None:
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        resident.generate(make_params(seed=3, num_inference_steps=8), on_step=stop_at_two)
    (again,) = resident.generate(make_params(seed=3))
    assert np.array_equal(pixels(reference), pixels(again))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 68}, "multiple of 8"),
        ({"mode": "image-to-image", "strength": 0.5}, "needs an init image"),
    ],
)
def test_inputs_are_checked_before_any_work(
    resident: ResidentPipeline, changes: dict, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        resident.generate(make_params(**changes))


def test_device_and_dtype_choice() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda")) is torch.bfloat16


def test_the_shapes_model_runs_on_one_cpu_thread_unless_told_otherwise() -> None:
    before = torch.get_num_threads()
    try:
        ResidentPipeline.load(Settings(model="tiny-shapes", device="cpu"))
        assert torch.get_num_threads() == 1
        ResidentPipeline.load(Settings(model="tiny-shapes", device="cpu", cpu_threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
