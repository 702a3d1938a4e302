"""A linear latent -> RGB map per model, fitted once from the model's own VAE: what live
previews show instead of a VAE decode.

Why not the VAE decoder: SD 1.x's decoder costs 2.5 TFLOP per 512x512 image (torch's
FlopCounterMode on its config), more than a guided denoising step, and even tiny-shapes' takes
about 10 ms of a CPU core per 64x64 preview, as much as a step of a small batch; a preview
every few steps would cost well over 5% of throughput. The projection is C x 3 multiply-adds
per latent pixel (microseconds). The price: no detail finer than a latent pixel, and colours
only as right as the latent space is linear (roughly, for SD, SDXL, SD3 and FLUX; loosely for
the tiny test models' small VAEs).
"""

import random
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

# Fitted maps by VAE: every server over one resident pipeline (tests, restarts) fits once.
_FITTED: "weakref.WeakKeyDictionary[torch.nn.Module, LatentToRGB]" = weakref.WeakKeyDictionary()
_FIT_IMAGES = 16
_FIT_SIDE = 96  # pixels: a multiple of every VAE's scale, cheap to encode even on a CPU


@dataclass(frozen=True)
class LatentToRGB:
    """RGB in 0..1 = latents (the engine's scaled latent space) @ weight + bias, per pixel."""

    weight: torch.Tensor  # (channels, 3)
    bias: torch.Tensor  # (3,)

    def rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """(C, h, w) latents -> (h, w, 3) RGB in 0..1, float32 on the CPU."""
        pixels = latents.detach().float().permute(1, 2, 0)
        rgb = pixels @ self.weight.to(pixels.device) + self.bias.to(pixels.device)
        return rgb.clamp_(0, 1).cpu()

    def image(self, latents: torch.Tensor, size: tuple[int, int]) -> Image.Image:
        """A PIL image of `size` (width, height) from (C, h, w) latents (bilinear resize)."""
        rgb = (self.rgb(latents) * 255).round_().to(torch.uint8).numpy()
        image = Image.fromarray(rgb, "RGB")
        return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def fit(vae: Any, scaling: float, shift: float = 0.0) -> LatentToRGB:
    """Least squares from latent channels (+1 for the bias) to the VAE's decoded RGB, averaged
    over each latent pixel's patch: on latents the VAE itself encodes from simple synthetic
    scenes, decoded by it again, so the map imitates the decoder on latents like those it
    meets. `scaling` and `shift`
    map the VAE's latents to the engine's: engine = (vae - shift) * scaling."""
    cached = _FITTED.get(vae)
    if cached is not None:
        return cached
    device = next(vae.parameters()).device
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)  # fp16 overflows in SDXL's VAE, as its decode says
    try:
        with torch.inference_mode():
            pictures = _scenes(_FIT_IMAGES, _FIT_SIDE).to(device, vae.dtype)
            encoded = vae.encode(pictures)
            dist = getattr(encoded, "latent_dist", None)
            latents = dist.mode() if dist is not None else encoded.latents
            decoded = vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    engine = ((latents.float() - shift) * scaling).cpu()
    rgb = ((decoded.float().cpu() + 1) / 2).clamp(0, 1)
    target = F.adaptive_avg_pool2d(rgb, engine.shape[-2:])  # one RGB per latent pixel
    x = engine.permute(0, 2, 3, 1).reshape(-1, engine.shape[1]).double()
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones_like(x[:, :1])], 1), y).solution
    fitted = LatentToRGB(solution[:-1].float(), solution[-1].float())
    _FITTED[vae] = fitted
    return fitted


def _scenes(count: int, side: int) -> torch.Tensor:
    """`count` images in -1..1: flat shapes of random colours on flat random backgrounds
    (seeded: every worker fits the same map). Piecewise-flat pictures, like most real ones,
    fitted tiny-shapes' decodes better than smooth colour fields did."""
    rng = random.Random(0)
    pictures = []
    for _ in range(count):
        image = Image.new("RGB", (side, side), _colour(rng))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 4)):
            x, y, size = (
                rng.randrange(side),
                rng.randrange(side),
                rng.randrange(side // 8, side // 2),
            )
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x, y, x + size, y + size), fill=_colour(rng))
        pictures.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8))
    return torch.stack(pictures).view(count, side, side, 3).permute(0, 3, 1, 2) / 127.5 - 1


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)
