"""A CLIP tokenizer whose vocabulary has one token for every word of the shapes grammar.

It is a standard byte-level `CLIPTokenizer` (so any prompt is encodable, word pieces
falling back to single bytes) whose BPE merges, trained on the grammar's words, join
each of them into one token ("r" "e" "d</w>" -> "red</w>"). Built in memory; the trained
pipeline saves it (tokenizer.json) beside the weights.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from shapes.world import BACKGROUNDS, COLOURS, SHAPES, SIZES

MAX_LENGTH = 16  # tokens incl. start and end; the longest caption needs 10
WORDS = ("a", "an", "on", "background", "big", "tiny", *SHAPES, *COLOURS, *BACKGROUNDS, *SIZES)
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Train BPE on the word list until every word is one token: the most frequent pair
    first (ties alphabetically), so encoding, which replays merges by rank, does the same."""
    split = [[*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for pieces in split:
            for pair in zip(pieces, pieces[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for pieces in split:
            i = 0
            while i < len(pieces) - 1:
                if (pieces[i], pieces[i + 1]) == best:
                    pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
                i += 1


def build_tokenizer() -> CLIPTokenizer:
    """The tokenizer, padding and truncating to `MAX_LENGTH` tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    merges = _merges(WORDS)
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*tokens, *_SPECIAL]))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
