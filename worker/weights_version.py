"""What the exact-result cache keys a model by: a digest of the weights that make its pictures,
and of the dtype and device kind they run in (the same seed gives other pixels in float16 on
a GPU than in float32 on a CPU)."""

import hashlib
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

CHUNK = 1 << 20


def weights_version(source: str | Path, pipe: DiffusionPipeline, dtype: torch.dtype) -> str:
    """A short digest of the model: its files' bytes where it was loaded from a folder (hashed
    once at start, ~1 GB/s), else the loaded modules' tensors."""
    digest = hashlib.sha256(f"{dtype}|{pipe.device.type}|".encode())
    folder = Path(source)
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            with path.open("rb") as file:
                while chunk := file.read(CHUNK):
                    digest.update(chunk)
    else:
        for name, module in sorted(pipe.components.items()):
            if isinstance(module, torch.nn.Module):
                for key, tensor in sorted(module.state_dict().items()):
                    digest.update(f"{name}.{key}".encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()[:32]
