"""AdapterStore: background loads, LRU within a byte budget, sha256 and load errors."""

import threading
import time
from pathlib import Path

import torch

from worker.lora.store import AdapterStore
from worker.lora.weights import FILE_CHANGED, LoraLayer, LoraWeights


def _weights(name: str, sha256: str, nbytes: int = 400) -> LoraWeights:
    down = torch.zeros(nbytes // 8, 1)  # float32: half the bytes here, half in up
    layer = LoraLayer(down=down, up=torch.zeros(1, nbytes // 8), scale=1.0)
    return LoraWeights(name=name, sha256=sha256, layers={("unet", "x"): layer})


def _wait(store: AdapterStore, name: str, sha: str) -> LoraWeights | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (weights := store.request(name, f"/{name}", sha)) or store.error(name, sha):
            return weights
        time.sleep(0.005)
    raise AssertionError(f"{name} never loaded")


def test_background_load_does_not_block_request() -> None:
    release, calls = threading.Event(), []

    def loader(path: Path, name: str, sha256: str) -> LoraWeights:
        calls.append(name)
        if name == "slow":
            assert release.wait(5)
        return _weights(name, sha256)

    store = AdapterStore(loader, budget_bytes=10_000)
    try:
        started = time.monotonic()
        assert store.request("slow", "/slow", "s1") is None  # starts the load, returns at once
        assert store.request("slow", "/slow", "s1") is None  # already loading: not again
        assert time.monotonic() - started < 0.5
        release.set()
        assert _wait(store, "slow", "s1").name == "slow"
        assert calls == ["slow"]
        assert store.request("slow", "/slow", "s1") is store.request("slow", "/slow", "s1")
    finally:
        release.set()
        store.close()


def test_lru_eviction_within_budget() -> None:
    store = AdapterStore(lambda path, name, sha256: _weights(name, sha256), budget_bytes=1000)
    try:
        a, b = _wait(store, "a", "1"), _wait(store, "b", "2")
        assert a.nbytes == 400 and store.resident() == [("a", "1"), ("b", "2")]
        store.request("a", "/a", "1")  # a is now the most recent
        _wait(store, "c", "3")  # 1200 bytes > 1000: b, least recently used, goes
        assert store.resident() == [("a", "1"), ("c", "3")]
        assert store.nbytes == 800
        # A job still holding b keeps its weights; the store just reloads b on demand.
        assert b.layers and store.request("b", "/b", "2") is None
        assert _wait(store, "b", "2") is not b
        # The same name with another sha256 (a re-uploaded file) is another adapter.
        assert _wait(store, "a", "9").sha256 == "9"
    finally:
        store.close()


def test_sha_mismatch_and_failed_load_are_reported() -> None:
    def loader(path: Path, name: str, sha256: str) -> LoraWeights:
        if name == "broken":
            raise ValueError(f"{path.name}: key 'x' is DoRA, which is not supported")
        return _weights(name, "f" * 64)  # the file's bytes hash to something else

    store = AdapterStore(loader, budget_bytes=10_000)
    try:
        assert _wait(store, "changed", "0" * 64) is None
        assert FILE_CHANGED in store.error("changed", "0" * 64)
        assert _wait(store, "broken", "1") is None
        assert store.error("broken", "1") == "broken: key 'x' is DoRA, which is not supported"
        assert store.request("broken", "/broken", "1") is None  # no retry loop on a bad file
        assert store.error("ok", "1") is None
        store.forget_error("broken", "1")
        assert store.error("broken", "1") is None
    finally:
        store.close()
