"""Text embeddings kept by text, so the text encoder runs once for a text that comes again:
the empty negative prompt of nearly every guided job, a prompt asked for with several seeds,
a client's retry. An embedding depends only on its text, so a kept one is the one the encoder
would give again."""

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

Embedding = dict[str, torch.Tensor]  # one text's rows: "embeds" and, for SDXL, "pooled"


class PromptCache:
    """The last `size` texts' embeddings (least recently used go first; 0 keeps none, and a
    text repeated within one call is still encoded once)."""

    def __init__(
        self, encode: Callable[[list[Hashable]], list[Embedding]], size: int = 256
    ) -> None:
        self.encode = encode
        self.size = size
        self._kept: OrderedDict[Hashable, Embedding] = OrderedDict()

    def get(self, texts: list[Hashable]) -> list[Embedding]:
        """Each text's embedding, in order; the texts not kept are encoded in one call. A
        text is any key `encode` understands (U-Nets: the text and its adapters)."""
        missing = [text for text in dict.fromkeys(texts) if text not in self._kept]
        fresh = dict(zip(missing, self.encode(missing), strict=True)) if missing else {}
        out = []
        for text in texts:
            if text in fresh:
                out.append(fresh[text])
            else:
                self._kept.move_to_end(text)
                out.append(self._kept[text])
        for text, embedding in fresh.items():
            self._kept[text] = embedding
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return out

    def clear(self) -> None:
        """Forget every kept embedding (benchmarks start each round cold)."""
        self._kept.clear()
