"""bench/real_models.py: the published architectures, checked by their parameter counts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from bench.real_models import MODELS, build  # noqa: E402

# Parameter counts of the published checkpoints (the widely quoted figures: 860M SD 1.5
# U-Net, 2.6B SDXL U-Net, 2B SD3-medium, 12B FLUX, 4.7B T5-XXL encoder, CLIP-L 123M,
# OpenCLIP bigG text tower with projection 695M). FLUX.1-schnell has no guidance embedder,
# 10.2M fewer than dev's 11.90B.
CLIP_L, CLIP_G, T5_XXL = 123_060_480, 694_659_840, 4_762_310_656
SD_VAE, FLOW_VAE = 83_653_863, 83_819_683
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": SD_VAE, "text_encoder": CLIP_L},
    "sdxl": {"unet": 2_567_463_684, "vae": SD_VAE, "text_encoder": CLIP_L,
             "text_encoder_2": CLIP_G},
    # SD3's CLIP-L has its 768x768 text projection (CLIPTextModelWithProjection).
    "sd3": {"transformer": 2_028_328_000, "vae": FLOW_VAE, "text_encoder": CLIP_L + 768 * 768,
            "text_encoder_2": CLIP_G, "text_encoder_3": T5_XXL},
    "flux": {"transformer": 11_891_178_560, "vae": FLOW_VAE, "text_encoder": CLIP_L,
             "text_encoder_2": T5_XXL},
}  # fmt: skip


def counts(pipe) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in part.parameters())
        for name, part in pipe.components.items()
        if isinstance(part, torch.nn.Module)
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_real_size_matches_published_parameter_counts(name: str) -> None:
    # On the meta device: the real sizes, no memory, no time.
    pipe = build(name, "meta", MODELS[name].cuda_dtype)
    assert counts(pipe) == PUBLISHED[name]
    dtypes = {p.dtype for part in pipe.components.values() if isinstance(part, torch.nn.Module)
              for p in part.parameters()}  # fmt: skip
    assert dtypes == {MODELS[name].cuda_dtype}
    assert torch.get_default_dtype() == torch.float32  # the build restores it


@pytest.mark.parametrize("name", list(MODELS))
def test_smoke_pipeline_runs_on_cpu(name: str) -> None:
    pipe = build(name, "cpu", torch.float32, smoke=True)
    spec = MODELS[name]
    image = pipe(
        "a red cube", height=128, width=128, num_inference_steps=2, guidance_scale=spec.guidance,
        generator=torch.Generator().manual_seed(0), **spec.call_kwargs,
    ).images[0]  # fmt: skip
    assert image.size == (128, 128)
