import json
from pathlib import Path

import pytest

from app.core.models import TINY_FLUX, TINY_MODEL, TINY_SD3, TINY_SDXL, ModelSpec, model_spec
from app.core.settings import Settings


def spec_of(name: str) -> ModelSpec:
    return model_spec(Settings(model=name))


@pytest.mark.parametrize(
    ("name", "family", "size", "steps", "guidance", "batch"),
    [
        (TINY_MODEL, "unet", 64, 20, 7.5, 16),
        (TINY_SDXL, "unet", 64, 20, 5.0, 16),
        (TINY_SD3, "flow", 64, 20, 7.0, 16),
        (TINY_FLUX, "flow", 64, 4, 3.5, 16),
        ("stabilityai/sd-turbo", "unet", 512, 1, 0.0, 8),
        ("stabilityai/stable-diffusion-xl-base-1.0", "unet", 1024, 30, 5.0, 2),
        ("stabilityai/stable-diffusion-3-medium-diffusers", "flow", 1024, 28, 7.0, 2),
        ("stabilityai/stable-diffusion-3.5-large", "flow", 1024, 28, 3.5, 2),
        ("black-forest-labs/FLUX.1-schnell", "flow", 1024, 4, 0.0, 2),
        ("black-forest-labs/FLUX.1-dev", "flow", 1024, 28, 3.5, 2),
    ],
)
def test_known_models_have_their_family_and_defaults(
    name: str, family: str, size: int, steps: int, guidance: float, batch: int
) -> None:
    spec = spec_of(name)
    assert spec.family == family and spec.engine == "step"
    facts = (spec.native_size, spec.default_steps, spec.default_guidance_scale, spec.max_batch)
    assert facts == (size, steps, guidance, batch)
    plain = ("text-to-image", "image-to-image")
    # U-Nets inpaint (and take LoRA stacks); flow models do neither yet.
    assert spec.modes == ((*plain, "inpainting") if family == "unet" else plain)
    assert spec.takes_loras == (family == "unet")


def test_flow_models_take_multiples_of_16_and_flow_schedulers() -> None:
    flux, sd = spec_of("black-forest-labs/flux.1-schnell"), spec_of(TINY_MODEL)  # any case
    assert (flux.family, flux.size_multiple, flux.schedulers) == ("flow", 16, ("flow_euler",))
    assert sd.size_multiple == 8
    assert {"euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm"} == set(
        sd.schedulers
    )


def diffusers_folder(root: Path, pipeline: str, denoiser: str, config: dict) -> Path:
    """A model folder's configs, as diffusers lays them out (no weights: the API reads none)."""
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    for part, content in ((denoiser, config), ("vae", {"block_out_channels": [1, 2, 3, 4]})):
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps(content))
    return root


def test_a_local_sd3_folder_is_a_flow_model_at_its_transformer_size(tmp_path: Path) -> None:
    folder = diffusers_folder(
        tmp_path, "StableDiffusion3Pipeline", "transformer", {"sample_size": 128}
    )
    spec = spec_of(str(folder))
    assert (spec.family, spec.native_size, spec.size_multiple) == ("flow", 1024, 16)


def test_a_local_flux_folder_without_sample_size_is_1024(tmp_path: Path) -> None:
    folder = diffusers_folder(tmp_path, "FluxPipeline", "transformer", {"patch_size": 1})
    assert (spec_of(str(folder)).family, spec_of(str(folder)).native_size) == ("flow", 1024)


def test_a_local_sdxl_folder_is_a_unet(tmp_path: Path) -> None:
    folder = diffusers_folder(tmp_path, "StableDiffusionXLPipeline", "unet", {"sample_size": 128})
    spec = spec_of(str(folder))
    assert (spec.family, spec.native_size, spec.size_multiple) == ("unet", 1024, 8)


def test_an_unknown_pipeline_class_runs_as_one_call_without_schedulers(tmp_path: Path) -> None:
    folder = diffusers_folder(tmp_path, "KandinskyV22Pipeline", "unet", {"sample_size": 64})
    spec = spec_of(str(folder))
    assert (spec.family, spec.engine, spec.schedulers) == ("pipeline", "pipeline", ())


def test_an_unknown_hub_name_gets_sd1_defaults() -> None:
    spec = spec_of("someone/their-finetune")
    assert (spec.family, spec.native_size, spec.size_multiple, spec.engine) == (
        "unet",
        512,
        8,
        "step",
    )


def test_a_native_size_override_stays_a_size_the_model_takes() -> None:
    assert model_spec(Settings(model=TINY_FLUX, native_size=520)).native_size == 512


def test_a_spec_built_by_hand_gets_its_familys_multiple() -> None:
    spec = ModelSpec("x", 1024, 4, 0.0, family="flow")
    assert spec.size_multiple == 16
