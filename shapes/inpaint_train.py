"""Fine-tune tiny-shapes into `tiny-shapes-inpaint`, a 9-channel inpainting checkpoint.

    python -m shapes.inpaint_train --out worker/weights/tiny-shapes-inpaint

As Stable Diffusion's inpainting model was made from SD 1.x: the U-Net is copied and its
`conv_in` widened from 4 to 9 input channels (noisy latents, the mask at latent size, the
latents of the masked image -- the order diffusers' StableDiffusionInpaintPipeline feeds
them), the 5 new channels' weights zero-initialised, so training starts from the base model's
function. The VAE, text encoder, tokenizer and scheduler are frozen and copied byte for byte.
The U-Net trains on `shapes.inpaint_world` examples (one or two shapes, a rectangle masked
over one of them, the caption of the masked shape) with `shapes.train`'s objective: epsilon
prediction on the same noise schedule, Min-SNR-5 weighting, captions dropped for
classifier-free guidance. Every draw is seeded; one torch thread by default.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel

from shapes import inpaint_world, models
from shapes.tokenizer import build_tokenizer
from shapes.train import _lr, _set_lr, caption_ids, drop_captions, encode_all, min_snr_weight

BASE = Path("worker/weights/tiny-shapes")
FROZEN = ("vae", "text_encoder", "tokenizer", "scheduler")
EXTRA_CHANNELS = 5  # 1 mask + 4 masked-image latents


def widen_conv_in(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """The same U-Net with `EXTRA_CHANNELS` more input channels whose weights are zero."""
    config = dict(unet.config)
    config["in_channels"] = unet.config.in_channels + EXTRA_CHANNELS
    wide = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    zeros = weight.new_zeros(weight.shape[0], EXTRA_CHANNELS, *weight.shape[2:])
    state["conv_in.weight"] = torch.cat([weight, zeros], dim=1)
    wide.load_state_dict(state)
    return wide


@torch.no_grad()
def conditioning(
    vae: AutoencoderKL, images: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled latents of the scenes, the masks at latent size and the scaled latents of the
    masked scenes, as StableDiffusionInpaintPipeline computes them: the mask binarised at 0.5,
    `masked_image = image * (mask < 0.5)` in [-1, 1] (masked pixels 0, i.e. mid-gray), the mask
    resized by `F.interpolate`'s default (nearest). `images` uint8 (N, 3, H, W), `masks` uint8
    (N, 1, H, W), 255 = repaint."""
    scale = vae.config.scaling_factor
    mask = (masks.float() / 255 >= 0.5).float()
    # encode_all maps uint8 values v to v / 127.5 - 1; 127.5 becomes exactly 0.
    masked = images.float() * (1 - mask) + 127.5 * mask
    latents = encode_all(vae, images) * scale
    masked_latents = encode_all(vae, masked) * scale
    latent_mask = F.interpolate(mask, size=latents.shape[-2:])
    return latents, latent_mask, masked_latents


def train_inpaint_unet(
    unet, text_encoder, latents, latent_mask, masked_latents, ids, empty_ids, args, log
) -> list[float]:
    """`shapes.train.train_unet`'s objective with the mask and masked-image latents
    concatenated to the noisy latents; the text encoder is frozen."""
    gen = torch.Generator().manual_seed(3)
    alphas = models.train_scheduler().alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    losses = []
    for step in range(args.steps):
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        z0 = latents[idx]
        tokens = drop_captions(ids[idx], empty_ids, args.drop, gen)
        t = torch.randint(0, len(alphas), (args.batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            text = text_encoder(tokens)[0]
        model_input = torch.cat([zt, latent_mask[idx], masked_latents[idx]], dim=1)
        pred = unet(model_input, t, text).sample
        loss = (min_snr_weight(a) * (pred - noise) ** 2).mean()
        _set_lr(opt, _lr(step, args.steps, args.lr, warmup=args.warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            log(f"unet step {step:5d}  weighted eps mse {loss.item():.4f}")
    return losses


def save(unet: UNet2DConditionModel, base: Path, out: Path) -> None:
    """A StableDiffusionInpaintPipeline folder: the float16 9-channel U-Net, the frozen
    components copied from `base` file for file."""
    vae = AutoencoderKL.from_pretrained(base / "vae")
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(base / "text_encoder"),
        tokenizer=build_tokenizer(),
        unet=unet.eval(),
        scheduler=models.sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    for name in FROZEN:
        shutil.rmtree(out / name)
        shutil.copytree(base / name, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("worker/weights/tiny-shapes-inpaint"))
    parser.add_argument("--base", type=Path, default=BASE, help="the tiny-shapes folder")
    parser.add_argument("--examples", type=int, default=8000, help="seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--drop", type=float, default=0.3, help="share of captions dropped")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:7.1f}s] {msg}", flush=True)

    images_np, masks_np, captions = inpaint_world.dataset(0, args.examples)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(masks_np)[:, None]
    ids, empty_ids = caption_ids(captions)
    log(f"{len(images)} examples rendered and tokenized")

    vae = AutoencoderKL.from_pretrained(args.base / "vae").float().eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(args.base / "text_encoder").float().eval()
    text_encoder.requires_grad_(False)
    base_unet = UNet2DConditionModel.from_pretrained(args.base / "unet").float()
    unet = widen_conv_in(base_unet).train()
    latents, latent_mask, masked_latents = conditioning(vae, images, masks)
    t_data = time.monotonic() - start
    log(f"latents {tuple(latents.shape)} and masked-image latents encoded")
    losses = train_inpaint_unet(
        unet, text_encoder, latents, latent_mask, masked_latents, ids, empty_ids, args, log
    )
    total = time.monotonic() - start
    save(unet, args.base, args.out)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": {"data": round(t_data), "total": round(total)},
        "final_loss": float(np.mean(losses[-50:])),
        "losses_every_50": [
            round(float(np.mean(losses[i : i + 50])), 5) for i in range(0, len(losses), 50)
        ],
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved {args.out}; {report['seconds']}")


if __name__ == "__main__":
    main()
