"""Object storage behind one small interface; a local folder by default."""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from app.core.jobs import Job
from app.core.settings import Settings

_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class ObjectNotFound(KeyError):
    """No object under that key."""


class Storage(Protocol):
    """Where workers write images and the API reads them."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`, replacing what was there."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under `key`; `ObjectNotFound` if there are none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under `key`, if there is one."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix/` (all of a job's files)."""
        ...

    def url(self, key: str, ttl: int) -> str | None:
        """An expiring URL clients can fetch the object from, or None to serve it ourselves."""
        ...


def check_key(key: str) -> str:
    """Keys are slash-separated safe names: no '..', no absolute paths, no surprises."""
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class LocalStorage:
    """A folder on a disk that API and workers share (zero set-up, one machine or a volume)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an image.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def url(self, key: str, ttl: int) -> str | None:
        return None  # The API serves local files itself.


def open_storage(settings: Settings) -> Storage:
    """The backend named by `LDM_STORAGE_URL`."""
    parsed = urlparse(settings.storage_url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.netloc + parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc:
        from app.core.s3 import S3Storage  # boto3 is only imported where S3 is used

        return S3Storage(
            bucket=parsed.netloc,
            prefix=parsed.path,
            # An empty variable (as a ConfigMap may hold) means "not set": AWS's defaults.
            endpoint_url=settings.s3_endpoint_url or None,
            public_endpoint_url=settings.s3_public_endpoint_url or None,
            region=settings.s3_region or None,
        )
    raise ValueError(
        f"unsupported storage URL {settings.storage_url!r}: "
        "use file:///absolute/path or s3://bucket/prefix"
    )


def image_key(job_id: str, index: int, output_format: str, *, attempt: int) -> str:
    """Where image `index` of a job's `attempt` is stored. Each attempt writes its own keys:
    a run given up for dead that finishes late cannot overwrite the files of the attempt that
    published (the job's record names the attempt whose images it holds)."""
    return f"{job_id}/a{attempt}/{index}.{output_format}"


def stored_image_key(job: Job, index: int) -> str:
    """Where image `index` of a job as read from its record is stored (a job answered from
    the result cache serves the files of the job that ran)."""
    owner, attempt = job.images_owner()
    return image_key(owner, index, job.request.output_format, attempt=attempt)


def init_image_key(job_id: str) -> str:
    """Where the API leaves a job's (normalised, PNG) init image for the worker."""
    return f"{job_id}/init.png"


def mask_image_key(job_id: str) -> str:
    """Where the API leaves an inpainting job's mask (black and white PNG) for the worker."""
    return f"{job_id}/mask.png"
