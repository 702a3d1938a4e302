"""A tiny random-weight Stable Diffusion pipeline, built offline from configuration.

It has the real SD-1.x architecture (cross-attention UNet, 8x VAE, CLIP text encoder,
Euler scheduler) at toy size, so tests and benchmarks exercise the production loading
and inference path in tens of milliseconds without downloading any weights.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.models import TINY_MODEL
from worker.offline_tokenizers import clip_tokenizer

if TYPE_CHECKING:
    from collections.abc import Callable

    from diffusers import DiffusionPipeline, StableDiffusionPipeline


_MAX_LENGTH = 77  # CLIP's context length; the pipeline pads/truncates prompts to this


def _build_pipeline() -> StableDiffusionPipeline:
    # Imported lazily: this module is importable where torch is not installed (API image).
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer(max_length=_MAX_LENGTH)
    # Fixed seed: every build (any process, any machine) yields identical weights; the
    # forked RNG keeps the caller's global torch random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            # Despite the name, diffusers reads this as the head count (legacy quirk).
            attention_head_dim=2,
            norm_num_groups=32,
        )
        # Four blocks -> three downsamplings -> latent scale factor 8, as in real SD.
        vae = AutoencoderKL(
            sample_size=64,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(16, 16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=_MAX_LENGTH,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        scheduler = EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            steps_offset=1,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_model(target: Path) -> Path:
    """Build the tiny pipeline and save it to ``target`` atomically; return ``target``."""
    return save_atomically(_build_pipeline, target)


def save_atomically(build: Callable[[], DiffusionPipeline], target: Path) -> Path:
    """Save the pipeline `build` makes to ``target`` so that no reader sees half of it, and
    concurrent builders (identical outputs) never clash; return ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one filesystem and is atomic. Not mkdtemp:
    # its 0700 mode would survive the rename and hide the model from other users.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        build().save_pretrained(tmp, safe_serialization=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # A concurrent builder won the race (target now exists, non-empty);
            # its output is identical, so keep it and drop ours.
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Return ``cache_dir / TINY_MODEL``, building it first if it is missing."""
    target = Path(cache_dir) / TINY_MODEL
    if not (target / "model_index.json").is_file():
        build_tiny_model(target)
    return target
