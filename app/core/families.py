"""Model families: which denoising loop serves a model, and what a request may ask of it.

Both sides read this: the API checks `scheduler` and sizes at submit, the worker picks the
family that runs the model. No torch here (the API image has none)."""

from typing import Literal

Family = Literal["unet", "flow", "pipeline"]

# Per-request schedulers by name. U-Nets (ε- or v-prediction) take any of these; flow-matching
# transformers (SD3, FLUX) take the flow ones. The worker maps each name to diffusers' class.
UNET_SCHEDULERS: tuple[str, ...] = (
    "euler",
    "euler_a",
    "ddim",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "unipc",
    "lcm",
)
FLOW_SCHEDULERS: tuple[str, ...] = ("flow_euler",)

# diffusers' pipeline class (model_index.json's `_class_name`) -> family.
PIPELINE_FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": "unet",
    "StableDiffusionImg2ImgPipeline": "unet",
    "StableDiffusionXLPipeline": "unet",
    "StableDiffusionXLImg2ImgPipeline": "unet",
    "StableDiffusionInpaintPipeline": "unet",
    "StableDiffusionXLInpaintPipeline": "unet",
    "StableDiffusion3Pipeline": "flow",
    "StableDiffusion3Img2ImgPipeline": "flow",
    "FluxPipeline": "flow",
    "FluxImg2ImgPipeline": "flow",
}


def family_of(pipeline_class: str | None) -> Family:
    """The family serving a diffusers pipeline class; anything unknown runs as one call."""
    return PIPELINE_FAMILIES.get(pipeline_class or "", "pipeline")


def schedulers_of(family: Family) -> tuple[str, ...]:
    """Scheduler names a request may pick for a model of `family` (none for the fallback)."""
    return {"unet": UNET_SCHEDULERS, "flow": FLOW_SCHEDULERS}.get(family, ())


def size_multiple_of(family: Family, vae_scale: int = 8) -> int:
    """Width and height must be multiples of this: the VAE's factor, times the transformer's
    patch size (2) for flow models."""
    return vae_scale * 2 if family == "flow" else vae_scale
