"""Train the tiny-shapes latent diffusion model on the CPU and save it as a diffusers folder.

    python -m shapes.train --out worker/weights/tiny-shapes

Stage 1 trains the VAE (on random 32x32 crops: it is fully convolutional, and crops cost a
quarter of full images); its latent means of the training images are then scaled to unit
variance (`vae.config.scaling_factor`). Stage 2 trains the U-Net and the text encoder
together on those latents, with epsilon prediction and 30% of captions dropped (empty
prompt) for classifier-free guidance. Every random draw is seeded: the same command on the
same machine and thread count gives the same weights. They are saved in float16.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from shapes import models
from shapes.tokenizer import build_tokenizer
from shapes.world import dataset, scene


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _crops(images: torch.Tensor, centres: torch.Tensor, idx: torch.Tensor, gen) -> torch.Tensor:
    """32x32 crops of images[idx], each placed so that it holds its shape's centre."""
    offset = torch.randint(4, 29, (len(idx), 2), generator=gen)
    corner = (centres[idx].round().long() - offset).clamp(0, 32)
    crops = [
        images[i, :, y : y + 32, x : x + 32]
        for i, (x, y) in zip(idx.tolist(), corner.tolist(), strict=True)
    ]
    return torch.stack(crops).float() / 127.5 - 1


def train_vae(vae, images, centres, steps: int, batch: int, lr: float, log) -> list[float]:
    """Reconstruction (MSE) plus a tiny KL term, on 32x32 crops around the shapes."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=gen)
        crop = _crops(images, centres, idx, gen)
        post = vae.encode(crop).latent_dist
        recon = vae.decode(post.sample(generator=gen)).sample
        rec = F.mse_loss(recon, crop)
        loss = rec + 1e-6 * post.kl().mean()
        _set_lr(opt, _lr(step, steps, lr))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(rec.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step:5d}  recon mse {rec.item():.5f}")
    return losses


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Latent means of all images (the VAE's posterior is near-deterministic)."""
    out = [
        vae.encode(images[i : i + batch].float() / 127.5 - 1).latent_dist.mean
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out)


def caption_ids(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The captions' token ids, padded to the encoder's length, and the empty prompt's (what
    a dropped caption becomes)."""
    tokenizer = build_tokenizer()

    def tok(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids

    return tok(captions), tok([""])[0]


def drop_captions(
    tokens: torch.Tensor, empty_ids: torch.Tensor, rate: float, gen: torch.Generator
) -> torch.Tensor:
    """A copy of the batch's token ids with a `rate` share of captions replaced by the empty
    prompt (classifier-free guidance's unconditional branch)."""
    tokens = tokens.clone()
    drop = torch.rand(len(tokens), generator=gen) < rate
    tokens[drop] = empty_ids
    return tokens


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): low-noise steps,
    which teach little about what the picture shows, stop dominating the gradient."""
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def train_unet(
    unet, text_encoder, latents, ids, empty_ids, steps, batch, lr, drop_rate, log
) -> list[float]:
    """Epsilon-prediction loss (min-SNR weighted); `drop_rate` of captions become the empty
    prompt, which trains the unconditional branch classifier-free guidance pushes away from."""
    gen = torch.Generator().manual_seed(2)
    noise_sched = models.train_scheduler()
    alphas = noise_sched.alphas_cumprod
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        z0 = latents[idx]
        tokens = drop_captions(ids[idx], empty_ids, drop_rate, gen)
        t = torch.randint(0, len(alphas), (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = unet(zt, t, text_encoder(tokens)[0]).sample
        loss = (min_snr_weight(a) * (pred - noise) ** 2).mean()
        _set_lr(opt, _lr(step, steps, lr))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"unet step {step:5d}  weighted eps mse {loss.item():.4f}")
    return losses


def plot_losses(vae_losses: list[float], unet_losses: list[float], path: Path) -> None:
    """Both stages' training loss (raw and smoothed) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, losses, title in (
        (axes[0], vae_losses, "stage 1: VAE reconstruction MSE"),
        (axes[1], unet_losses, "stage 2: U-Net + text encoder, min-SNR epsilon MSE"),
    ):
        y = np.asarray(losses)
        k = max(1, len(y) // 50)
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(y, alpha=0.3, lw=0.7)
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, lw=1.5)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("worker/weights/tiny-shapes"))
    parser.add_argument("--loss-png", type=Path, default=Path("docs/tiny-shapes-loss.png"))
    parser.add_argument("--images", type=int, default=12000, help="training scenes (seeds 0..N-1)")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--unet-lr", type=float, default=1.5e-3)
    parser.add_argument("--drop", type=float, default=0.3, help="share of captions dropped")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:7.1f}s] {msg}", flush=True)

    images_np, captions = dataset(0, args.images)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).contiguous()
    centres = torch.tensor([(s.cx, s.cy) for s in map(scene, range(args.images))])
    tokenizer = build_tokenizer()
    ids, empty_ids = caption_ids(captions)
    log(f"{len(images)} scenes rendered and tokenized")

    torch.manual_seed(0)
    vae, unet = models.build_vae(), models.build_unet()
    text_encoder = models.build_text_encoder(tokenizer)
    vae_losses = train_vae(vae, images, centres, args.vae_steps, args.vae_batch, args.vae_lr, log)
    t_vae = time.monotonic() - start
    vae.eval().requires_grad_(False)
    latents = encode_all(vae, images)
    scale = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scale)
    log(f"latents {tuple(latents.shape)}, scaling_factor {scale:.4f}")
    unet_losses = train_unet(
        unet,
        text_encoder,
        latents * scale,
        ids,
        empty_ids,
        args.unet_steps,
        args.batch,
        args.unet_lr,
        args.drop,
        log,
    )
    total = time.monotonic() - start

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=models.sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # Half the bytes in the repository; loaders cast to the dtype they run in (float32 on
    # the CPU). Every figure in the README is measured on these float16 weights.
    pipe.to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    plot_losses(vae_losses, unet_losses, args.loss_png)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": {"vae": round(t_vae), "total": round(total)},
        "final_loss": {
            "vae": float(np.mean(vae_losses[-50:])),
            "unet": float(np.mean(unet_losses[-50:])),
        },
        "scaling_factor": scale,
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved {args.out}; {report['seconds']}")


if __name__ == "__main__":
    main()
