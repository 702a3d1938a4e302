"""Tests for the offline tiny Stable Diffusion pipeline used by tests and benchmarks."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
hub_constants = pytest.importorskip("huggingface_hub.constants")

from app.core.models import TINY_MODEL  # noqa: E402
from worker.tiny_model import build_tiny_model, ensure_tiny_model  # noqa: E402

UNET_WEIGHTS = Path("unet/diffusion_pytorch_model.safetensors")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No hub, no sockets: anything that tries to download fails loudly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        # huggingface_hub reads the variable once at import, so the env alone is too late.
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)

        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError("network access attempted in an offline test")

        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        yield


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("models")
    with offline():
        ensure_tiny_model(cache)
    return cache


@pytest.fixture(scope="module")
def model_dir(cache_dir: Path) -> Path:
    return cache_dir / TINY_MODEL


@pytest.fixture(scope="module")
def pipe(model_dir: Path):
    with offline():
        pipeline = diffusers.AutoPipelineForText2Image.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_loads_through_auto_pipeline_with_sd_components(pipe) -> None:
    assert isinstance(pipe, diffusers.StableDiffusionPipeline)
    assert isinstance(pipe.unet, diffusers.UNet2DConditionModel)
    assert pipe.unet.config.cross_attention_dim == 32
    assert any("CrossAttn" in block for block in pipe.unet.config.down_block_types)
    assert isinstance(pipe.vae, diffusers.AutoencoderKL)
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.latent_channels == pipe.unet.config.in_channels == 4
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert isinstance(pipe.text_encoder, transformers.CLIPTextModel)
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    assert isinstance(pipe.tokenizer, transformers.CLIPTokenizer)
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert isinstance(pipe.scheduler, diffusers.EulerDiscreteScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    assert pipe.safety_checker is None


def test_text2image_returns_64px_image(pipe) -> None:
    generator = torch.Generator().manual_seed(0)
    with offline():
        out = pipe("a red cube", height=64, width=64, num_inference_steps=20, generator=generator)
    (image,) = out.images
    assert image.size == (64, 64)
    assert image.mode == "RGB"


def test_native_resolution_is_64px(pipe) -> None:
    out = pipe("a red cube", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 64)


def test_image2image_from_pipe(pipe) -> None:
    from PIL import Image

    img2img = diffusers.AutoPipelineForImage2Image.from_pipe(pipe)
    assert isinstance(img2img, diffusers.StableDiffusionImg2ImgPipeline)
    assert img2img.unet is pipe.unet  # shares weights, no reload
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    with offline():
        out = img2img("a blue cube", image=init, strength=0.5, num_inference_steps=4)
    assert out.images[0].size == (64, 64)


def test_tokenizer_handles_unicode_and_pads_to_77(pipe) -> None:
    tok = pipe.tokenizer
    prompt = "A 🐱 café — 東京, naïve!"
    ids = tok(prompt).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # Byte-level BPE: nothing maps to the unknown token (which is <|endoftext|> in CLIP).
    assert tok.unk_token_id not in ids[1:-1]
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == prompt.lower().replace(" ", "")

    padded = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True)
    assert tok.model_max_length == 77
    assert len(padded.input_ids) == 77
    assert padded.input_ids[len(ids) :] == [tok.pad_token_id] * (77 - len(ids))

    long_ids = tok("word " * 200, padding="max_length", truncation=True).input_ids
    assert len(long_ids) == 77 and long_ids[-1] == tok.eos_token_id


def test_ensure_reuses_existing_model(cache_dir: Path, model_dir: Path) -> None:
    weights = model_dir / UNET_WEIGHTS
    before = weights.stat().st_mtime_ns
    assert ensure_tiny_model(cache_dir) == model_dir
    assert weights.stat().st_mtime_ns == before
    assert [p.name for p in cache_dir.iterdir()] == [TINY_MODEL]  # no temp leftovers


def test_builds_are_deterministic(model_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with offline():
        other = build_tiny_model(tmp_path / "again")
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    files = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    assert UNET_WEIGHTS in files
    for rel in files:
        assert (model_dir / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_build_over_existing_target_keeps_it(tmp_path: Path) -> None:
    # What a process that loses the build race sees: the folder appeared meanwhile.
    target = build_tiny_model(tmp_path / TINY_MODEL)
    before = (target / UNET_WEIGHTS).stat().st_mtime_ns
    assert build_tiny_model(target) == target
    assert (target / UNET_WEIGHTS).stat().st_mtime_ns == before
    assert (target / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [TINY_MODEL]
    # Built in a temp dir, but must end up readable like any freshly made folder.
    (tmp_path / "ref").mkdir()
    assert target.stat().st_mode == (tmp_path / "ref").stat().st_mode
