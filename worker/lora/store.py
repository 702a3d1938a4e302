"""Adapters read once, kept by recency within a byte budget, loaded off the engine thread."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from worker.lora.weights import FILE_CHANGED, LoraWeights

# loader(path=..., name=..., sha256=...) -> LoraWeights; e.g.
# functools.partial(read_lora, pipe=pipe, device=device, dtype=dtype).
Loader = Callable[..., LoraWeights]
Key = tuple[str, str]  # (name, sha256): a re-uploaded file under the same name is another key


class AdapterStore:
    """The most recently used adapters, within `budget_bytes` of LoRA weights.

    The budget bounds the cache, not jobs in flight: an adapter running jobs use may be
    evicted here while they keep their own reference to it (its memory is freed when the last
    one finishes), and a single adapter larger than the budget is still handed out once.
    Loads run one at a time on a background thread, so `request` never blocks. Thread-safe.
    """

    def __init__(self, loader: Loader, budget_bytes: int) -> None:
        self._loader = loader
        self._budget = budget_bytes
        self._lock = threading.Lock()
        self._resident: OrderedDict[Key, LoraWeights] = OrderedDict()  # LRU first
        self._loading: dict[Key, Future[LoraWeights]] = {}
        self._errors: dict[Key, str] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-load")

    def request(self, name: str, path: str | Path, sha256: str) -> LoraWeights | None:
        """The adapter if resident (now most recent); else start loading it (once) and return
        None: ask again later, and check `error` for a load that failed."""
        key = (name, sha256)
        with self._lock:
            weights = self._resident.get(key)
            if weights is not None:
                self._resident.move_to_end(key)
                return weights
            if key not in self._loading and key not in self._errors:
                future = self._pool.submit(self._load, key, Path(path))
                self._loading[key] = future
            return None

    def error(self, name: str, sha256: str) -> str | None:
        """Why loading this adapter failed, or None. The job that needs it fails with it."""
        with self._lock:
            return self._errors.get((name, sha256))

    def forget_error(self, name: str, sha256: str) -> None:
        """Let a later `request` try the file again (e.g. after it was fixed)."""
        with self._lock:
            self._errors.pop((name, sha256), None)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(w.nbytes for w in self._resident.values())

    def resident(self) -> list[Key]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._resident)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _load(self, key: Key, path: Path) -> None:
        name, sha256 = key
        try:
            weights = self._loader(path=path, name=name, sha256=sha256)
            if weights.sha256 != sha256:  # the loader hashes the bytes it parsed
                raise ValueError(f"{path.name}: {FILE_CHANGED}")
        except Exception as exc:  # any failure is the job's error, not the worker's
            message = str(exc) or type(exc).__name__
            with self._lock:
                self._loading.pop(key, None)
                self._errors[key] = message
            return
        with self._lock:
            self._loading.pop(key, None)
            self._resident[key] = weights
            self._evict()

    def _evict(self) -> None:
        """Drop least recently used adapters until within budget (keeping the newest)."""
        total = sum(w.nbytes for w in self._resident.values())
        while total > self._budget and len(self._resident) > 1:
            _, dropped = self._resident.popitem(last=False)
            total -= dropped.nbytes
