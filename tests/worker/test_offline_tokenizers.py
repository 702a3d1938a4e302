"""Tests for the in-memory CLIP and T5 tokenizers that random-weight pipelines are built with."""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from worker.offline_tokenizers import clip_tokenizer, t5_tokenizer  # noqa: E402

PROMPT = "A photo of a café — 東京 at night, 🐱!"


def round_trip(tok, path: Path):
    """Save and reload as a diffusers pipeline does with its tokenizer folders."""
    tok.save_pretrained(path)
    return type(tok).from_pretrained(path)


def test_clip_without_vocab_size_is_tiny_sd_layout() -> None:
    tok = clip_tokenizer()
    # 256 byte chars, their word-final forms, 5 merges, then the two special tokens last.
    assert len(tok) == 256 * 2 + 5 + 2
    assert (tok.bos_token_id, tok.eos_token_id) == (517, 518)
    assert tok.model_max_length == 77


def test_clip_padded_to_real_vocab(tmp_path: Path) -> None:
    tok = clip_tokenizer(vocab_size=49408)
    assert len(tok) == 49408
    # As in the published CLIP vocab: EOS is the top id (the text encoder pools at argmax).
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    ids = tok(PROMPT).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert max(ids) < 49408 and tok.unk_token_id not in ids[1:-1]
    padded = tok(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[: len(ids)] == ids
    again = round_trip(tok, tmp_path / "clip")
    assert len(again) == 49408
    assert again(PROMPT).input_ids == ids


def test_clip_rejects_vocab_below_base() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        clip_tokenizer(vocab_size=100)


def test_t5_layout_and_padding() -> None:
    tok = t5_tokenizer(vocab_size=32128)
    assert isinstance(tok, transformers.T5TokenizerFast)
    assert len(tok) == 32128
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.model_max_length == 512
    ids = tok(PROMPT).input_ids
    assert ids[-1] == tok.eos_token_id and max(ids) < 32128
    # Latin-1 text is spelled out; outside it (CJK, emoji) is <unk>, by design.
    assert tok.decode(ids, skip_special_tokens=True).startswith("A photo of a café")
    # SD3 and FLUX pad T5 prompts to a fixed 256 (or 512) tokens.
    padded = tok(PROMPT, padding="max_length", max_length=256, truncation=True)
    assert len(padded.input_ids) == 256
    assert padded.input_ids[len(ids) :] == [0] * (256 - len(ids))
    assert sum(padded.attention_mask) == len(ids)
    long_ids = tok("word " * 400, padding="max_length", max_length=256, truncation=True)
    assert len(long_ids.input_ids) == 256 and long_ids.input_ids[-1] == tok.eos_token_id


def test_t5_round_trip_keeps_ids(tmp_path: Path) -> None:
    tok = t5_tokenizer(vocab_size=32128, max_length=256)
    again = round_trip(tok, tmp_path / "t5")
    assert len(again) == 32128 and again.model_max_length == 256
    for text in (PROMPT, "", "word " * 300):
        assert again(text).input_ids == tok(text).input_ids
        assert (
            again(text, padding="max_length", max_length=256, truncation=True).input_ids
            == tok(text, padding="max_length", max_length=256, truncation=True).input_ids
        )


def test_t5_without_vocab_size_is_small() -> None:
    tok = t5_tokenizer()
    assert 300 < len(tok) < 500
    assert max(tok(PROMPT).input_ids) < len(tok)
