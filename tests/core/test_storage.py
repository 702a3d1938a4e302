from pathlib import Path

import pytest

from app.core.settings import Settings
from app.core.storage import LocalStorage, ObjectNotFound, check_key, open_storage


def test_local_round_trip_and_replace(tmp_path: Path) -> None:
    storage = open_storage(Settings(storage_url=(tmp_path / "store").as_uri()))
    storage.put("j_1/0.png", b"first", "image/png")
    storage.put("j_1/0.png", b"second", "image/png")
    assert storage.get("j_1/0.png") == b"second"
    assert (tmp_path / "store" / "j_1" / "0.png").read_bytes() == b"second"
    assert not [p for p in (tmp_path / "store").rglob(".tmp-*")]


def test_missing_object(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        LocalStorage(tmp_path).get("j_1/0.png")


def test_delete_removes_one_object_and_tolerates_missing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("j_1/0.png", b"a", "image/png")
    storage.put("j_1/1.png", b"b", "image/png")
    storage.delete("j_1/0.png")
    storage.delete("j_1/0.png")
    with pytest.raises(ObjectNotFound):
        storage.get("j_1/0.png")
    assert storage.get("j_1/1.png") == b"b"


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
