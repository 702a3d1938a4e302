"""Inpainting for the U-Net family, step by step, as diffusers' StableDiffusionInpaintPipeline
computes it: its own `prepare_latents`, `prepare_mask_latents` and mask processor, called on
the loaded pipeline with the job's scheduler swapped in.

- An ordinary (4-channel) U-Net repaints by masked latent blending: after every scheduler
  step the unmasked region is put back to the init image's latents, noised to the next
  timestep (`Blend`). Its forward is an image-to-image forward, so these jobs batch with
  image-to-image and text-to-image jobs of their size.
- An inpainting checkpoint (9-channel U-Net) takes the mask and the masked image's latents
  as extra input channels (`cond["mask"]`, `cond["masked_latents"]`, row-aligned).

The decoded image then gets diffusers' `apply_overlay`: outside the mask, the pixels are the
init image's own (the VAE's round trip would otherwise shift them slightly)."""

from dataclasses import dataclass

import torch
from diffusers import AutoPipelineForInpainting, DiffusionPipeline
from PIL import Image

from worker.engine.state import EngineRequest
from worker.families.base import scheduler_of


def mask_channels(pipe: DiffusionPipeline) -> bool:
    """Whether the U-Net is an inpainting checkpoint's (latents + mask + masked image)."""
    return pipe.unet.config.in_channels == 9


@dataclass
class Blend:
    """Masked latent blending after each step of a 4-channel U-Net (diffusers' loop)."""

    image_latents: torch.Tensor
    noise: torch.Tensor
    keep_mask: torch.Tensor  # 1 where the job repaints (the mask at latent size)

    def __call__(self, latents: torch.Tensor, scheduler, timesteps, index: int) -> torch.Tensor:
        """`latents` after step `index - 1`: the unmasked region back to the init image."""
        proper = self.image_latents
        if index < len(timesteps):
            noise_timestep = timesteps[index]
            proper = scheduler.add_noise(proper, self.noise, torch.tensor([noise_timestep]))
        return (1 - self.keep_mask) * proper + self.keep_mask * latents


@dataclass
class Inpainting:
    """A job's inpainting state: its start latents, the blend (4-channel U-Nets) or the
    extra input rows (9-channel), and what the final overlay needs."""

    latents: torch.Tensor
    blend: Blend | None
    cond: dict[str, torch.Tensor]
    init_image: Image.Image
    mask: Image.Image


class Inpainter:
    """Prepares inpainting jobs on a loaded U-Net pipeline."""

    def __init__(self, pipe: DiffusionPipeline) -> None:
        self.pipe = AutoPipelineForInpainting.from_pipe(pipe)
        self.pipe.set_progress_bar_config(disable=True)
        self.channels9 = mask_channels(pipe)

    def prepare(
        self,
        request: EngineRequest,
        scheduler,
        timesteps: torch.Tensor,
        cfg: bool,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> Inpainting:
        """Start latents, noise and mask latents in diffusers' order of random draws."""
        params = request.params
        n, size = params.num_images, (params.width, params.height)
        init = request.init_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        mask = request.mask.convert("L")
        with scheduler_of(self.pipe, scheduler) as pipe:
            pixels = pipe.image_processor.preprocess(init, height=params.height, width=params.width)
            pixels = pixels.to(dtype=torch.float32)
            latents, noise, *image_latents = pipe.prepare_latents(
                n,
                pipe.vae.config.latent_channels,
                params.height,
                params.width,
                dtype,
                device,
                generators,
                image=pixels,
                timestep=timesteps[:1].repeat(n),
                is_strength_max=params.strength == 1.0,
                return_noise=True,
                return_image_latents=not self.channels9,
            )
            condition = pipe.mask_processor.preprocess(
                mask, height=params.height, width=params.width
            )
            mask_rows, masked_latents = pipe.prepare_mask_latents(
                condition,
                pixels * (condition < 0.5),
                n,
                params.height,
                params.width,
                dtype,
                device,
                generators,
                cfg,
            )
        overlay_mask = mask.resize(size, Image.Resampling.NEAREST)
        if self.channels9:
            cond = {"mask": mask_rows, "masked_latents": masked_latents}
            return Inpainting(latents, None, cond, init, overlay_mask)
        keep = mask_rows.chunk(2)[0] if cfg else mask_rows
        blend = Blend(image_latents[0], noise, keep)
        return Inpainting(latents, blend, {}, init, overlay_mask)

    def overlay(self, images: list[Image.Image], job: Inpainting) -> list[Image.Image]:
        """Outside the mask, the init image's pixels exactly (diffusers' `apply_overlay`)."""
        processor = self.pipe.image_processor
        return [processor.apply_overlay(job.mask, job.init_image, image) for image in images]
