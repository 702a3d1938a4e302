"""Tokenizers built entirely in memory, for random-weight pipelines made offline.

Real tokenizers come from the hub, which tests and benchmarks cannot reach. These have the
right classes and special-token layout, so diffusers' pipelines call them exactly as they call
the published ones, and their vocabularies can be padded to a real text encoder's size
(CLIP's 49408, T5's 32128) so real-size embedding tables can be fed. What the ids mean is
beside the point: the weights they index are random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, T5Tokenizer

_CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
# A handful of merges so BPE actually merges something; the weights are random anyway.
_CLIP_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>")]

# T5's fixed layout (published spiece.model): pad 0, eos 1, unk 2.
_T5_SPECIAL = ("<pad>", "</s>", "<unk>")
_T5_SPACE = "\u2581"  # SentencePiece's word-start marker, "▁"


def _fillers(count: int, template: str) -> list[str]:
    """``count`` distinct pieces that no prompt produces (no merge or piece builds them)."""
    return [template.format(i) for i in range(count)]


def clip_tokenizer(vocab_size: int | None = None, max_length: int = 77) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer; padded with filler tokens to ``vocab_size`` if given.

    Without ``vocab_size`` it is exactly the tokenizer of ``tiny-sd`` (519 tokens). The
    fillers go before the special tokens, so ``<|endoftext|>`` keeps the highest id as in
    the published CLIP vocab: the published text-encoder configs say ``eos_token_id: 2``,
    which makes transformers pool at ``argmax(input_ids)``, right only if EOS is the top id.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    # Every byte maps to one of these 256 chars, so any unicode prompt is encodable
    # without an unknown token; "</w>" variants cover word-final pieces.
    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(pair) for pair in _CLIP_MERGES]
    tokens = list(dict.fromkeys(tokens))
    if vocab_size is not None:
        missing = vocab_size - len(tokens) - len(_CLIP_SPECIAL_TOKENS)
        if missing < 0:
            raise ValueError(f"vocab_size {vocab_size} < the {vocab_size - missing} base tokens")
        tokens += _fillers(missing, "<|filler_{}|>")
    tokens += list(_CLIP_SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=list(_CLIP_MERGES), model_max_length=max_length)


def _t5_pieces() -> list[tuple[str, float]]:
    """Unigram pieces after the specials: the word marker, then single characters, bare and
    word-initial. Scores favour the word-initial form, so "▁a" beats "▁" + "a"."""
    chars = [chr(c) for c in range(33, 256) if chr(c).isprintable()]
    pieces = [(_T5_SPACE, -5.0)]
    pieces += [(c, -10.0) for c in chars]
    pieces += [(_T5_SPACE + c, -9.0) for c in chars]
    return pieces


def t5_tokenizer(vocab_size: int | None = None, max_length: int = 512) -> T5Tokenizer:
    """A T5 (Unigram) tokenizer: pad 0, ``</s>`` 1, ``<unk>`` 2, then character pieces;
    padded with filler pieces to ``vocab_size`` if given.

    Characters outside Latin-1 map to ``<unk>`` (no byte fallback): transformers' T5Tokenizer
    rebuilds its Unigram model with ``byte_fallback=False`` when it reloads a saved tokenizer,
    and this one must give the same ids after ``save_pretrained`` + ``from_pretrained``.
    No sentinel ``<extra_id_N>`` tokens: nothing here does span corruption.
    """
    from transformers import T5Tokenizer

    vocab = [(tok, 0.0) for tok in _T5_SPECIAL] + _t5_pieces()
    if vocab_size is not None:
        missing = vocab_size - len(vocab)
        if missing < 0:
            raise ValueError(f"vocab_size {vocab_size} < the {len(vocab)} base pieces")
        # The lowest score: a filler would only be chosen if a prompt spelled it out.
        vocab += [(tok, -100.0) for tok in _fillers(missing, "<filler_{}>")]
    # T5Tokenizer builds the tokenizers Unigram model from these pieces itself (unk_id 2,
    # Metaspace pre-tokenizer, "</s>" appended), the same way it does on reload.
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)
