"""The previews' linear latent -> RGB map, fitted from the trained tiny-shapes VAE: on the
latents of real generations it tracks what the VAE itself decodes."""

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

from worker.pipeline import SHAPES_WEIGHTS
from worker.preview_fit import fit

PROMPTS = (
    "a red circle on a blue background",
    "a green square on a yellow background",
    "a purple triangle on a white background",
    "an orange circle on a black background",
)


@pytest.fixture(scope="module")
def shapes() -> Iterator[DiffusionPipeline]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # ops too small to share out (see tests/worker/test_families.py)
    pipe = DiffusionPipeline.from_pretrained(SHAPES_WEIGHTS, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    torch.set_num_threads(previous)


def test_the_fit_tracks_the_vae_decode_of_generated_latents(shapes: DiffusionPipeline) -> None:
    vae = shapes.vae
    projection = fit(vae, vae.config.scaling_factor)
    assert fit(vae, vae.config.scaling_factor) is projection  # fitted once per VAE
    correlations = []
    for seed, prompt in enumerate(PROMPTS):
        generator = torch.Generator().manual_seed(seed)
        latents = shapes(prompt, num_inference_steps=20, output_type="latent", generator=generator)
        latents = latents.images
        with torch.inference_mode():
            decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        # What the VAE shows, averaged over each latent pixel, against the projection.
        truth = F.adaptive_avg_pool2d(((decoded[0] + 1) / 2).clamp(0, 1), latents.shape[-2:])
        preview = projection.rgb(latents[0]).permute(2, 0, 1)
        assert preview.shape == truth.shape and 0 <= preview.min() <= preview.max() <= 1
        correlations.append(torch.corrcoef(torch.stack([preview.flatten(), truth.flatten()]))[0, 1])
    # Rough (a small VAE's latent space is far from linear: 0.45 to 0.76 here; a fit on
    # these very latents reaches about 0.85), but clearly the picture's, on every prompt.
    assert sum(correlations) / len(correlations) > 0.3, correlations
    assert min(correlations) > 0, correlations
    image = projection.image(latents[0], (96, 48))
    assert (image.mode, image.size) == ("RGB", (96, 48))
