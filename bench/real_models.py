"""SD 1.5, SDXL base, SD3-medium and FLUX.1-schnell built from their published configs, with
random weights, straight onto a device: real-size pipelines for speed and memory figures
(bench/gpu.py) where no weights can be downloaded. Speed does not depend on the weights.

The values are those of each model's published config.json (the hub folders named in each
comment), written from memory without access to the files; the ones not certain say so.
tests/bench/test_real_models.py checks the parameter counts against the published ones.
`smoke=True` keeps every architecture (block types, encoders, conditioning paths) but shrinks
widths and depths so a CPU builds and runs all four in seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.offline_tokenizers import clip_tokenizer, t5_tokenizer

CLIP_VOCAB, T5_VOCAB = 49408, 32128

# CLIP ViT-L/14 text tower: SD 1.5 text_encoder/config.json, SDXL/SD3 text_encoder, FLUX
# text_encoder (openai/clip-vit-large-patch14).
CLIP_L = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
# OpenCLIP ViT-bigG/14 text tower: SDXL text_encoder_2, SD3 text_encoder_2.
CLIP_G = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    projection_dim=1280, hidden_act="gelu",
)  # fmt: skip
# T5 v1.1 XXL encoder (google/t5-v1_1-xxl): SD3 text_encoder_3, FLUX text_encoder_2.
T5_XXL = dict(
    d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, tie_word_embeddings=False,
)  # fmt: skip
SMOKE_CLIP = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    projection_dim=32,
)  # fmt: skip
# d_model 64 >= the two smoke CLIPs side by side: SD3 pads their 32 + 32 up to T5's width.
SMOKE_T5 = dict(d_model=64, d_ff=96, num_layers=2, num_heads=4, d_kv=16)

# The SD-family VAE (4 levels, 8x): stable-diffusion-v1-5 vae/config.json; SDXL, SD3 and
# FLUX keep the layout and change latent channels, scaling and shift.
VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
SMOKE_VAE = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
# Flow models' VAE: no quant convs (stable-diffusion-3-medium-diffusers, FLUX.1-schnell vae/).
FLOW_VAE = dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)

# runwayml/stable-diffusion-v1-5 unet/config.json.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
)  # fmt: skip
SD15_UNET_SMOKE = dict(
    sample_size=16, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
    cross_attention_dim=32, attention_head_dim=2,
)  # fmt: skip
# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json. cross_attention_dim is the two
# encoders' widths side by side (768 + 1280); 2816 = 6 time ids x 256 + 1280 pooled.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True,
    freq_shift=0,
)  # fmt: skip
SDXL_UNET_SMOKE = dict(
    sample_size=16, layers_per_block=1, block_out_channels=(32, 64, 64), cross_attention_dim=64,
    attention_head_dim=(2, 2, 4), transformer_layers_per_block=(1, 1, 2),
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
)  # fmt: skip
# stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json.
SD3_DIT = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
)  # fmt: skip
SD3_DIT_SMOKE = dict(
    sample_size=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
    pos_embed_max_size=16,
)  # fmt: skip
# black-forest-labs/FLUX.1-schnell transformer/config.json (pooled = CLIP-L's 768 width).
FLUX_DIT = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
    guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
FLUX_DIT_SMOKE = dict(
    num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
)  # fmt: skip

# scheduler/scheduler_config.json of each folder. The published files also carry keys the
# class does not take (clip_sample, skip_prk_steps on Euler...): from_config drops them.
SD_BETAS = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1,
)  # fmt: skip
SDXL_SCHEDULER = dict(
    SD_BETAS, prediction_type="epsilon", interpolation_type="linear", timestep_spacing="leading",
    use_karras_sigmas=False,
)  # fmt: skip
# schnell: a fixed shift of 1 (dev: dynamic shifting, shift 3). The base/max shift and
# image-seq-len values are the published ones as remembered; unused without dynamic shift.
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    # SD 1.5 ships a PNDM config (PLMS: skip_prk_steps).
    "sd15": ("PNDMScheduler", dict(SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False)),
    "sdxl": ("EulerDiscreteScheduler", SDXL_SCHEDULER),
    "sd3": ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0)),
    "flux": ("FlowMatchEulerDiscreteScheduler", FLUX_SCHEDULER),
}


@dataclass(frozen=True)
class Spec:
    """How a model is run: native size, steps, guidance, dtype on CUDA, extra call args."""

    name: str
    title: str
    size: int
    steps: int
    guidance: float
    cuda_dtype: torch.dtype
    call_kwargs: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, Spec] = {
    "sd15": Spec("sd15", "SD 1.5", 512, 20, 7.5, torch.float16),
    "sdxl": Spec("sdxl", "SDXL base", 1024, 20, 5.0, torch.float16),
    "sd3": Spec("sd3", "SD3-medium", 1024, 20, 7.0, torch.bfloat16),
    # schnell is distilled: no guidance, 4 steps, T5 prompts of at most 256 tokens.
    "flux": Spec(
        "flux", "FLUX.1-schnell", 1024, 4, 0.0, torch.bfloat16, {"max_sequence_length": 256}
    ),
}
SMOKE_SIZE, SMOKE_STEPS = 128, 2


@contextlib.contextmanager
def _creating(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters are made on ``device`` in ``dtype`` from the start: a 12B model never
    exists on the CPU in fp32 first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _clip(size: dict[str, Any], smoke: bool, projection: bool) -> tuple[Any, Any]:
    """A CLIP text encoder (with the projection head when ``projection``) and its tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer(None if smoke else CLIP_VOCAB)
    config = CLIPTextConfig(
        **(SMOKE_CLIP if smoke else size),
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        # From the tokenizer: the published configs' legacy ids (bos 0, pad 1, eos 2) mean
        # "pool at the highest id", which the offline vocab also satisfies.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config), tokenizer


def _t5(smoke: bool) -> tuple[Any, Any]:
    """A T5 v1.1 encoder (no decoder, as the pipelines load it) and its tokenizer."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer(None if smoke else T5_VOCAB)
    size = dict(SMOKE_T5, feed_forward_proj="gated-gelu") if smoke else T5_XXL
    config = T5Config(
        **size, vocab_size=len(tokenizer) if smoke else T5_VOCAB, is_encoder_decoder=False,
        use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(config), tokenizer


def _vae(smoke: bool, sample_size: int, **published: Any) -> Any:
    from diffusers import AutoencoderKL

    layout = {**VAE, **SMOKE_VAE} if smoke else VAE
    return AutoencoderKL(**layout, sample_size=sample_size, **published)


def _components(name: str, smoke: bool) -> dict[str, Any]:
    """Every model component of ``name``, created under the caller's device/dtype."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    size = SMOKE_SIZE if smoke else MODELS[name].size

    def pick(real: dict[str, Any], shrunk: dict[str, Any]) -> dict[str, Any]:
        return {**real, **shrunk} if smoke else real

    if name == "sd15":
        encoder, tokenizer = _clip(CLIP_L, smoke, projection=False)
        return dict(
            unet=UNet2DConditionModel(**pick(SD15_UNET, SD15_UNET_SMOKE)),
            vae=_vae(smoke, size, latent_channels=4, scaling_factor=0.18215),
            text_encoder=encoder, tokenizer=tokenizer,
        )  # fmt: skip
    if name == "sdxl":
        encoder, tokenizer = _clip(CLIP_L, smoke, projection=False)
        encoder_2, tokenizer_2 = _clip(CLIP_G, smoke, projection=True)
        return dict(
            unet=UNet2DConditionModel(**pick(SDXL_UNET, SDXL_UNET_SMOKE)),
            # force_upcast: the published SDXL VAE overflows in fp16, so diffusers decodes in fp32.
            vae=_vae(smoke, size, latent_channels=4, scaling_factor=0.13025, force_upcast=True),
            text_encoder=encoder, tokenizer=tokenizer,
            text_encoder_2=encoder_2, tokenizer_2=tokenizer_2,
        )  # fmt: skip
    if name == "sd3":
        encoder, tokenizer = _clip(CLIP_L, smoke, projection=True)
        encoder_2, tokenizer_2 = _clip(CLIP_G, smoke, projection=True)
        encoder_3, tokenizer_3 = _t5(smoke)
        return dict(
            transformer=SD3Transformer2DModel(**pick(SD3_DIT, SD3_DIT_SMOKE)),
            vae=_vae(smoke, size, **FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609),
            text_encoder=encoder, tokenizer=tokenizer,
            text_encoder_2=encoder_2, tokenizer_2=tokenizer_2,
            text_encoder_3=encoder_3, tokenizer_3=tokenizer_3,
        )  # fmt: skip
    if name == "flux":
        encoder, tokenizer = _clip(CLIP_L, smoke, projection=False)
        encoder_2, tokenizer_2 = _t5(smoke)
        return dict(
            transformer=FluxTransformer2DModel(**pick(FLUX_DIT, FLUX_DIT_SMOKE)),
            vae=_vae(smoke, size, **FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=encoder, tokenizer=tokenizer,
            text_encoder_2=encoder_2, tokenizer_2=tokenizer_2,
        )  # fmt: skip
    raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating tensors not yet in ``dtype`` (positional tables made from numpy),
    as from_pretrained(torch_dtype=...) leaves them; quietly, unlike diffusers' ``.to``."""
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for tensor in store.values():
                if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor.data = tensor.data.to(dtype)


PIPELINES = {
    "sd15": ("StableDiffusionPipeline", dict(safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)),
    "sdxl": ("StableDiffusionXLPipeline", dict(force_zeros_for_empty_prompt=True,
                                              add_watermarker=False)),
    "sd3": ("StableDiffusion3Pipeline", {}),
    "flux": ("FluxPipeline", {}),
}  # fmt: skip


def build(
    name: str, device: str | torch.device, dtype: torch.dtype, smoke: bool = False, seed: int = 0
) -> Any:
    """The diffusers pipeline of ``name`` ("sd15", "sdxl", "sd3", "flux") with random weights,
    every module created on ``device`` in ``dtype``; ``smoke`` shrinks the architecture.
    ``device="meta"`` builds the real sizes without memory (for parameter counts)."""
    import diffusers

    torch.manual_seed(seed)
    with _creating(device, dtype):
        parts = _components(name, smoke)
    # Buffers made from numpy or with an explicit dtype (positional tables) follow the
    # modules, as from_pretrained(torch_dtype=...) would cast them.
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            _cast(part.eval().requires_grad_(False), dtype)
    scheduler_class, scheduler_config = SCHEDULERS[name]
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    pipeline_class, extra = PIPELINES[name]
    pipe = getattr(diffusers, pipeline_class)(**parts, scheduler=scheduler, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe
