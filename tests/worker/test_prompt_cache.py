"""The text-embedding cache: each distinct text encoded once, the least recently used go."""

import torch

from worker.families.prompt_cache import PromptCache


class Encoder:
    """Stands in for a text encoder: one row per text, its length; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[dict[str, torch.Tensor]]:
        self.calls.append(texts)
        return [{"embeds": torch.tensor([[float(len(text))]])} for text in texts]


def lengths(embeddings: list[dict[str, torch.Tensor]]) -> list[float]:
    return [float(e["embeds"].item()) for e in embeddings]


def test_each_distinct_text_is_encoded_once_and_kept() -> None:
    encoder = Encoder()
    cache = PromptCache(encoder, size=4)
    assert lengths(cache.get(["cat", "", "cat", ""])) == [3, 0, 3, 0]
    assert encoder.calls == [["cat", ""]]
    assert lengths(cache.get(["", "dog", "cat"])) == [0, 3, 3]
    assert encoder.calls == [["cat", ""], ["dog"]]  # only the new text


def test_the_least_recently_used_text_goes_first() -> None:
    encoder = Encoder()
    cache = PromptCache(encoder, size=2)
    cache.get(["a", "bb"])
    cache.get(["a"])  # "a" used again: "bb" is now the oldest
    cache.get(["ccc"])
    cache.get(["a", "bb"])
    assert encoder.calls == [["a", "bb"], ["ccc"], ["bb"]]


def test_size_zero_keeps_nothing_but_still_encodes_a_repeated_text_once() -> None:
    encoder = Encoder()
    cache = PromptCache(encoder, size=0)
    assert lengths(cache.get(["x", "x"])) == [1, 1]
    cache.get(["x"])
    assert encoder.calls == [["x"], ["x"]]
