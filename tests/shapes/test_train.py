"""The training script, shrunk to a few steps: it writes a diffusers folder that the standard
loader reads, in float16, and the same command writes the same bytes (every draw is seeded)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors import safe_open  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = ["--images", "64", "--vae-steps", "3", "--unet-steps", "3", "--batch", "8"]


def train(out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "shapes.train",
            "--out",
            str(out),
            "--loss-png",
            str(out.parent / f"{out.name}-loss.png"),
            *TINY_RUN,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.safetensors"))
    }


def test_training_twice_gives_the_same_loadable_float16_weights(tmp_path: Path) -> None:
    train(first := tmp_path / "first")
    train(second := tmp_path / "second")
    assert len(digests(first)) == 3  # VAE, U-Net, text encoder
    assert digests(first) == digests(second)
    assert (tmp_path / "first-loss.png").stat().st_size > 0
    report = json.loads((first / "training.json").read_text())
    assert report["args"]["unet_steps"] == "3" and report["scaling_factor"] > 0

    stored = set()
    for path in first.rglob("*.safetensors"):
        with safe_open(path, framework="pt") as weights:
            stored |= {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert stored == {"F16"}
    # As the worker loads it on a CPU: float32.
    pipe = diffusers.DiffusionPipeline.from_pretrained(first, dtype=torch.float32)
    assert isinstance(pipe, diffusers.StableDiffusionPipeline)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
