"""Tiny random-weight SDXL, SD3 and FLUX pipelines, built offline from configuration.

Like `tiny-sd` (worker/tiny_model.py): each has its real architecture at toy size (SDXL's
two CLIP encoders and text-time embedding; SD3's MMDiT with two CLIPs and a T5, 16-channel
VAE; FLUX's double/single-stream transformer with guidance embedding, packed latents and
resolution-dependent shift), 64x64 native, so the step engine's families are checked against
diffusers' own pipelines in seconds, without downloading anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.models import TINY_FLUX, TINY_SD3, TINY_SDXL
from worker.offline_tokenizers import clip_tokenizer, t5_tokenizer
from worker.tiny_model import save_atomically

_CLIP_LENGTH = 77
_LATENT_SIZE = 8  # x the VAE's 8: 64 px native


def _clip_config(tokenizer: Any, hidden: int = 32, projection: int = 32) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_LENGTH,
        projection_dim=projection,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5(tokenizer: Any, d_model: int) -> Any:
    """A two-layer T5 v1.1-style encoder (gated GELU, as SD3's and FLUX's T5-XXL)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def _vae(latent_channels: int, **factors: float) -> Any:
    """Four blocks -> three downsamplings -> latent scale factor 8, as the real ones."""
    from diffusers import AutoencoderKL

    flow = latent_channels == 16  # SD3's and FLUX's VAEs have no quant convs
    return AutoencoderKL(
        sample_size=_LATENT_SIZE * 8,
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        use_quant_conv=not flow,
        use_post_quant_conv=not flow,
        **factors,
    )


def _sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        # SDXL's micro-conditioning: pooled text embeds + six time ids, embedded.
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text_encoder_2.config.projection_dim,
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=_vae(4),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _sd3() -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    tokenizer_3 = t5_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2))
    # The two CLIPs' hidden states, side by side, are padded to T5's width: it must be wider.
    t5_width = 64
    transformer = SD3Transformer2DModel(
        sample_size=_LATENT_SIZE,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,  # = heads x head dim, as in SD3
        joint_attention_dim=t5_width,
        pooled_projection_dim=2 * text_encoder.config.projection_dim,
        pos_embed_max_size=32,  # up to 512 px
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=_t5(tokenizer_3, t5_width),
        tokenizer_3=tokenizer_3,
    )


def _flux() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    t5_width = 32
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16 * 4,  # 2x2 patches of the 16-channel latents, packed
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=True,  # dev-like: guidance is an input, true CFG is extra rows
        axes_dims_rope=(4, 6, 6),
    )
    # FluxPipeline always defaults to 128 latents (1024 px); this key (ignored by the model,
    # with a warning at load) tells the service and FlowFamily the tiny model's native size.
    transformer.register_to_config(sample_size=_LATENT_SIZE)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=_t5(tokenizer_2, t5_width),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


_BUILDERS: dict[str, Callable[[], Any]] = {TINY_SDXL: _sdxl, TINY_SD3: _sd3, TINY_FLUX: _flux}
TINY_FAMILIES: tuple[str, ...] = tuple(_BUILDERS)


def _build_pipeline(name: str) -> Any:
    import torch

    if name not in _BUILDERS:
        raise ValueError(f"no tiny model {name!r}; there are {', '.join(_BUILDERS)}")
    # Fixed seed: every build (any process, any machine) yields identical weights; the
    # forked RNG keeps the caller's global torch random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _BUILDERS[name]()


def build_tiny(name: str, target: Path) -> Path:
    """Build tiny model `name` and save it to ``target`` atomically; return ``target``."""
    return save_atomically(lambda: _build_pipeline(name), target)


def ensure_tiny(name: str, cache_dir: Path) -> Path:
    """Return ``cache_dir / name``, building tiny model `name` there first if it is missing."""
    target = Path(cache_dir) / name
    if not (target / "model_index.json").is_file():
        build_tiny(name, target)
    return target
