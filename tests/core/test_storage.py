from pathlib import Path

import pytest

from app.core.settings import Settings
from app.core.storage import LocalStorage, ObjectNotFound, Storage, check_key, open_storage


def test_local_round_trip_and_replace(tmp_path: Path) -> None:
    storage = open_storage(Settings(storage_url=(tmp_path / "store").as_uri()))
    storage.put("j_1/0.png", b"first", "image/png")
    storage.put("j_1/0.png", b"second", "image/png")
    assert storage.get("j_1/0.png") == b"second"
    assert (tmp_path / "store" / "j_1" / "0.png").read_bytes() == b"second"
    assert not [p for p in (tmp_path / "store").rglob(".tmp-*")]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend, for the behaviour every backend owes (S3 over real HTTP, moto)."""
    if request.param == "local":
        return LocalStorage(tmp_path)
    return open_storage(request.getfixturevalue("s3_settings"))


def test_every_backend_deletes_one_object_or_a_whole_job(backend: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        backend.get("j_1/0.png")
    for key in ("j_1/0.png", "j_1/1.png", "j_2/0.png"):
        backend.put(key, key.encode(), "image/png")
    backend.delete("j_1/0.png")
    backend.delete("j_1/0.png")  # already gone: fine
    with pytest.raises(ObjectNotFound):
        backend.get("j_1/0.png")
    assert backend.get("j_1/1.png") == b"j_1/1.png"
    backend.delete_prefix("j_1")
    with pytest.raises(ObjectNotFound):
        backend.get("j_1/1.png")
    assert backend.get("j_2/0.png") == b"j_2/0.png"


def test_every_backend_refuses_keys_that_escape(backend: Storage) -> None:
    with pytest.raises(ValueError):
        backend.put("../outside.png", b"x", "image/png")


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(TypeError):  # the write fails half-way, as a full disk would make it
        storage.put("j_1/0.png", "not bytes", "image/png")  # type: ignore[arg-type]
    assert list((tmp_path / "j_1").iterdir()) == []


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../../b", "a//b", "a/./b", "", "a\\b"])
def test_keys_cannot_escape_the_root(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported storage URL"):
        open_storage(Settings(storage_url="ftp://host/path"))
