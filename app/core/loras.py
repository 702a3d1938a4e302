"""The adapter registry: which LoRA files each model may use, by name, with their sha256.

Adapters are `<model>/<name>.safetensors` files under a root: the ones shipped with the
worker (`worker/weights/loras/`, e.g. tiny-shapes' `cyan`) and the operator's `LDM_LORA_DIR`,
a folder or an `s3://bucket/prefix` (files there win over shipped ones of the same name).
API replicas and workers read the same registry: the API to validate and pin a request's
adapters (name -> sha256), the worker to find the file. Clients only ever pass names.
"""

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.core.settings import Settings

SHIPPED = Path(__file__).resolve().parents[2] / "worker" / "weights" / "loras"
SUFFIX = ".safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Adapter:
    """One adapter file of one model, read at `path` (a local copy for S3 ones)."""

    name: str
    sha256: str
    path: Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Hashes:
    """sha256 of local files, recomputed only when a file's size or mtime changes."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}
        self._lock = threading.Lock()

    def of(self, path: Path) -> str:
        stat = path.stat()
        with self._lock:
            known = self._known.get(path)
        if known and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = _sha256(path)
        with self._lock:
            self._known[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest


def _folder(root: Path, model: str, hashes: _Hashes) -> dict[str, Adapter]:
    found: dict[str, Adapter] = {}
    folder = root / model
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        name = path.name.removesuffix(SUFFIX)
        if _NAME.match(name) and path.is_file():
            found[name] = Adapter(name, hashes.of(path), path)
    return found


class _S3Folder:
    """An `s3://bucket/prefix` of adapters, copied once into a local cache (by ETag)."""

    def __init__(self, url: str, cache: Path, client: Any) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.cache = cache
        self.client = client

    def list(self, model: str, hashes: _Hashes) -> dict[str, Adapter]:
        prefix = "/".join(p for p in (self.prefix, model) if p) + "/"
        found: dict[str, Adapter] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix) :].removesuffix(SUFFIX)
                if not item["Key"].endswith(SUFFIX) or not _NAME.match(name):
                    continue
                etag = item["ETag"].strip('"').replace("-", "_")
                local = self.cache / model / f"{name}.{etag}{SUFFIX}"
                if not local.exists():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    partial = local.with_suffix(".part")
                    self.client.download_file(self.bucket, item["Key"], str(partial))
                    partial.replace(local)  # readers never see half a file
                found[name] = Adapter(name, hashes.of(local), local)
        return found


class Registry:
    """Adapters per model, from the shipped folder and the operator's source; listings are
    kept `ttl` seconds, so an adapter added to the folder or bucket shows up within that."""

    def __init__(
        self,
        source: str | None = None,
        cache: Path = Path(".cache/loras"),
        shipped: Path | None = SHIPPED,
        ttl: float = 30.0,
        s3_client: Any = None,
    ) -> None:
        self.shipped = shipped
        self.ttl = ttl
        self._hashes = _Hashes()
        self._listed: dict[str, tuple[float, dict[str, Adapter]]] = {}
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._s3: _S3Folder | None = None
        if source and source.startswith("s3://"):
            self._s3 = _S3Folder(source, cache, s3_client)
        elif source:
            self._folder = Path(source.removeprefix("file://")).expanduser()

    def adapters(self, model: str) -> dict[str, Adapter]:
        """The model's adapters by name."""
        now = time.monotonic()
        with self._lock:
            listed = self._listed.get(model)
        if listed and now - listed[0] < self.ttl:
            return listed[1]
        found: dict[str, Adapter] = {}
        if self.shipped is not None:
            found |= _folder(self.shipped, model, self._hashes)
        if self._folder is not None:
            found |= _folder(self._folder, model, self._hashes)
        if self._s3 is not None:
            found |= self._s3.list(model, self._hashes)
        with self._lock:
            self._listed[model] = (now, found)
        return found

    def find(self, model: str, name: str, sha256: str) -> Adapter | None:
        """The file of adapter `name` if it still has `sha256` (the file is checked, not just
        the listing: a stat, and a re-hash only if it changed)."""
        for _ in range(2):
            adapter = self.adapters(model).get(name)
            try:
                if adapter is not None and self._hashes.of(adapter.path) == sha256:
                    return adapter
            except OSError:
                pass  # gone since it was listed
            with self._lock:
                self._listed.pop(model, None)  # list again once: it may have moved
        return None


def registry_from(settings: "Settings") -> Registry:
    """The registry `settings` configure (`LDM_LORA_DIR`, S3 credentials as for storage)."""
    client = None
    if settings.lora_dir and settings.lora_dir.startswith("s3://"):
        import boto3  # only where an S3 registry is configured

        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None,
        )
    return Registry(settings.lora_dir, settings.model_cache / "loras", s3_client=client)
