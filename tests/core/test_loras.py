"""The adapter registry: shipped adapters, the operator's folder or S3 prefix, sha256 pins."""

import hashlib
import os
import time
from pathlib import Path

import boto3

from app.core.loras import SHIPPED, Registry, registry_from
from app.core.settings import Settings


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_folder_adapters_by_model_with_their_sha256(tmp_path: Path) -> None:
    shipped, operator = tmp_path / "shipped", tmp_path / "operator"
    write(shipped / "m" / "cyan.safetensors", b"shipped cyan")
    write(shipped / "m" / "pink.safetensors", b"shipped pink")
    cyan = write(operator / "m" / "cyan.safetensors", b"the operator's cyan")
    write(operator / "m" / "notes.txt", b"not an adapter")
    write(operator / "m" / "-bad name.safetensors", b"not a valid name")
    write(operator / "other" / "x.safetensors", b"another model's")
    registry = Registry(str(operator), shipped=shipped)
    adapters = registry.adapters("m")
    assert sorted(adapters) == ["cyan", "pink"]
    assert adapters["cyan"].sha256 == cyan  # the operator's file wins
    assert adapters["cyan"].path == operator / "m" / "cyan.safetensors"
    assert registry.adapters("nothing") == {}


def test_a_changed_file_is_found_only_by_its_new_hash(tmp_path: Path) -> None:
    path = tmp_path / "m" / "a.safetensors"
    old = write(path, b"version 1")
    registry = Registry(str(tmp_path), shipped=None, ttl=3600)
    assert registry.find("m", "a", old) is not None
    new = write(path, b"version 2, longer")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    # A job pinned to the old file no longer finds one; the new hash is found at once.
    assert registry.find("m", "a", old) is None
    assert registry.find("m", "a", new).sha256 == new
    assert registry.adapters("m")["a"].sha256 == new


def test_new_adapters_show_up_after_the_listing_ttl(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path), shipped=None, ttl=0.2)
    assert registry.adapters("m") == {}
    write(tmp_path / "m" / "late.safetensors", b"added later")
    deadline = time.monotonic() + 5
    while "late" not in registry.adapters("m"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_an_s3_prefix_is_listed_and_copied_locally(s3_settings: Settings, tmp_path: Path) -> None:
    bucket = s3_settings.storage_url.removeprefix("s3://").split("/")[0]
    client = boto3.client(
        "s3", endpoint_url=s3_settings.s3_endpoint_url, region_name=s3_settings.s3_region
    )
    data = b"an adapter in a bucket"
    client.put_object(Bucket=bucket, Key="loras/tiny-sd/style.safetensors", Body=data)
    client.put_object(Bucket=bucket, Key="loras/tiny-sd/readme.md", Body=b"no")
    settings = s3_settings.model_copy(
        update={"lora_dir": f"s3://{bucket}/loras", "model_cache": tmp_path / "cache"}
    )
    registry = registry_from(settings)
    adapters = registry.adapters("tiny-sd")
    assert sorted(adapters) == ["style"]
    assert adapters["style"].sha256 == hashlib.sha256(data).hexdigest()
    assert adapters["style"].path.read_bytes() == data
    assert adapters["style"].path.is_relative_to(tmp_path / "cache")


def test_the_shipped_tiny_shapes_adapters_are_listed() -> None:
    adapters = Registry(None).adapters("tiny-shapes")
    assert {"diamond", "cyan", "pink"} <= set(adapters)
    assert all(a.path.is_relative_to(SHIPPED) for a in adapters.values())
