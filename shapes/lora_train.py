"""Train a LoRA adapter that teaches tiny-shapes a colour or shape word its base grammar lacks.

    python -m shapes.lora_train --colour cyan \
        --out worker/weights/loras/tiny-shapes/cyan.safetensors
    python -m shapes.lora_train --shape diamond --images 512 --steps 800 \
        --out worker/weights/loras/tiny-shapes/diamond.safetensors

The base weights (`worker/weights/tiny-shapes`, loaded in float32) stay frozen; PEFT LoRA
layers on the U-Net (attention, projections, feed-forward, ResNet convolutions) and on the
text encoder (attention and MLP: the new word arrives as byte-piece tokens, which only the text
encoder can turn into a meaning) are trained with `shapes.train.train_unet`'s loss and noise
schedule, on scenes drawn in the new colour (`world.lora_scene`) mixed with ordinary scenes
and captions (`--prior`), so the base words keep their meaning.

The shipped VAE was trained on six colours; its encoder maps a new colour onto one of them
(a cyan square encodes to latents that decode blue), though its decoder can draw the new
colour from other latents. So each new-colour scene's latents are found by inverting the
frozen decoder (`invert`: the encoder's means, refined by Adam on the reconstruction error);
the adapter runs with the shipped VAE, unchanged. A new shape (`--shape`, `world.shape_scene`)
is drawn in the base colours with straight edges, which the VAE reproduces, so its scenes are
encoded as `shapes.train` encodes the base data set (no inversion).

Every random draw is seeded and one torch thread is used, so the same command on the same
machine writes the same bytes. The adapter is saved in float16 with diffusers'
`save_lora_weights` (keys `unet.*` and `text_encoder.*`, the LoRA configs, rank and alpha, in
the file's metadata), which `pipe.load_lora_weights` reads; a JSON of the arguments, timings
and losses is written next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict

from shapes.train import caption_ids, encode_all, train_unet
from shapes.world import NEW_COLOURS, NEW_SHAPES, lora_scene, scene, shape_scene

UNET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",  # the ResNet blocks' convolutions: the 16x16 level has no attention
    "conv2",
)
TEXT_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
BASE = Path("worker/weights/tiny-shapes")


def load_base(folder: Path = BASE) -> StableDiffusionPipeline:
    """The base pipeline in float32 (its weights are stored in float16), frozen."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    for part in (pipe.vae, pipe.unet, pipe.text_encoder):
        part.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scene_tensors(scenes) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 images (N, 3, 64, 64), shape centres (N, 2) and captions of `scenes`."""
    from shapes.world import render

    images = np.stack([np.asarray(render(s)) for s in scenes])
    centres = torch.tensor([(s.cx, s.cy) for s in scenes])
    captions = [s.caption for s in scenes]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), centres, captions


def invert(vae, images: torch.Tensor, steps: int, lr: float, log, batch: int = 64):
    """Latents (unscaled) that the frozen decoder of `vae` turns into `images` (uint8 N x 3 x
    64 x 64): the encoder's means, refined by Adam on the decoder's reconstruction MSE only
    where the shape is (its mask at latent resolution, grown by one latent pixel), so that
    the backgrounds keep the latents the base model knows."""
    out, losses = [], []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].float() / 127.5 - 1
        shape = (x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.1  # corner: background
        mask = F.max_pool2d(F.max_pool2d(shape.float(), 4), 3, stride=1, padding=1)
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.mean
        delta = torch.zeros_like(z0, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        for step in range(steps):
            loss = F.mse_loss(vae.decode(z0 + mask * delta).sample, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                log(f"invert images {i}..{i + len(x) - 1} step {step:4d}  mse {loss.item():.5f}")
        losses.append(loss.item())
        out.append((z0 + mask * delta).detach())
    return torch.cat(out), losses


def add_lora(unet, text_encoder, rank: int, alpha: float) -> None:
    """PEFT LoRA layers (adapter "default") on the U-Net and the text encoder; A gaussian,
    B zero, so training starts from the base model's output."""
    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_MODULES
        )
    )
    # PEFT directly: transformers' `add_adapter` wants a newer PEFT than diffusers needs.
    config = LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_MODULES
    )
    inject_adapter_in_model(config, text_encoder, adapter_name="default")
    text_encoder.peft_config = {"default": config}


def save_adapter(pipe, out: Path, dtype: torch.dtype = torch.float16) -> None:
    """The LoRA layers of `pipe.unet` and `pipe.text_encoder` as one diffusers LoRA file."""

    def layers(model) -> dict[str, torch.Tensor]:
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        return {k: v.detach().to(dtype).contiguous() for k, v in state.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=out.parent,
        weight_name=out.name,
        unet_lora_layers=layers(pipe.unet),
        text_encoder_lora_layers=layers(pipe.text_encoder),
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    out.chmod(0o644)  # safetensors writes 0600; the file ships in the repository


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    word = parser.add_mutually_exclusive_group(required=True)
    word.add_argument("--colour", choices=sorted(NEW_COLOURS), help="a new colour word")
    word.add_argument("--shape", choices=sorted(NEW_SHAPES), help="a new shape word")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors to write")
    parser.add_argument("--json", type=Path, help="report (default: --out with .json)")
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--images", type=int, default=64, help="new-word scenes (seeds 0..N-1)")
    parser.add_argument("--prior-images", type=int, default=512, help="ordinary scenes")
    parser.add_argument("--prior", type=float, default=0.5, help="share of ordinary draws")
    parser.add_argument("--invert-steps", type=int, default=150)
    parser.add_argument("--invert-lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--drop", type=float, default=0.1, help="share of captions dropped")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:7.1f}s] {msg}", flush=True)

    pipe = load_base(args.base)
    new_word = args.colour or args.shape
    new_images, new_centres, new_captions = scene_tensors(
        [
            lora_scene(seed, args.colour) if args.colour else shape_scene(seed, args.shape)
            for seed in range(args.images)
        ]
    )
    n_prior = args.prior_images
    prior_images, _, prior_captions = scene_tensors([scene(seed) for seed in range(n_prior)])
    log(f"{args.images} {new_word} scenes and {n_prior} ordinary ones rendered")

    if args.colour:  # the encoder cannot see a new colour: invert the decoder
        new_latents, inv_losses = invert(
            pipe.vae, new_images, args.invert_steps, args.invert_lr, log
        )
    else:  # base colours, straight edges: the encoder's means, as `shapes.train` uses
        new_latents, inv_losses = encode_all(pipe.vae, new_images), []
    t_invert = time.monotonic() - start
    # Each new-word scene repeated so that they make up (1 - prior) of the draws.
    repeat = max(1, round(n_prior * (1 - args.prior) / (args.prior * args.images)))
    latents = torch.cat([new_latents.repeat(repeat, 1, 1, 1), encode_all(pipe.vae, prior_images)])
    ids, empty_ids = caption_ids(new_captions * repeat + prior_captions)
    scale = pipe.vae.config.scaling_factor
    log(f"latents {tuple(latents.shape)}; training LoRA rank {args.rank}")

    torch.manual_seed(1)
    add_lora(pipe.unet, pipe.text_encoder, args.rank, args.alpha)
    losses = train_unet(
        pipe.unet,
        pipe.text_encoder,
        latents * scale,
        ids,
        empty_ids,
        args.steps,
        args.batch,
        args.lr,
        args.drop,
        log,
    )
    total = time.monotonic() - start
    save_adapter(pipe, args.out)
    report = {
        **(
            {"colour": args.colour, "rgb": NEW_COLOURS[args.colour]}
            if args.colour
            else {"shape": args.shape}
        ),
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": {
            ("invert" if args.colour else "encode"): round(t_invert),
            "total": round(total),
        },
        "final_loss": {
            **({"invert_mse": float(np.mean(inv_losses))} if args.colour else {}),
            "lora": float(np.mean(losses[-50:])),
        },
        "lora": {
            "rank": args.rank,
            "alpha": args.alpha,
            "unet_modules": list(UNET_MODULES),
            "text_encoder_modules": list(TEXT_MODULES),
            "dtype": "float16",
        },
        "torch": torch.__version__,
    }
    json_path = args.json or args.out.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"saved {args.out} ({args.out.stat().st_size} bytes); {report['seconds']}")


if __name__ == "__main__":
    main()
