"""The reference tokenizers with the heavy frameworks: PyTorch / TensorFlow tensors, and Hugging Face
transformers loading the converter's files (marked interop; skipped when transformers is missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rembert_ref.errors import UserError
from testkit.spm_models import probe_corpus

LINES = probe_corpus(150, seed=7)


@pytest.mark.parametrize("kind", ["np", "pt", "tf"])
def test_return_tensors(pair, kind: str) -> None:
    slow, fast = pair
    a = slow(["one", "two three four"], padding=True, return_tensors=kind)
    b = fast(["one", "two three four"], padding=True, return_tensors=kind)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key]))
        assert tuple(np.asarray(b[key]).shape) == (2, len(fast("two three four")["input_ids"]))
    with pytest.raises(UserError, match="padding=True"):
        fast(["one", "two three four"], return_tensors=kind)


@pytest.mark.interop
def test_transformers_loads_the_files(tok_dir: Path, pair) -> None:
    transformers = pytest.importorskip("transformers")
    slow, fast = pair
    auto = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    generic = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    assert auto.is_fast and len(auto) == len(fast) == 512  # nothing appended
    assert (auto.cls_token_id, auto.sep_token_id, auto.pad_token_id, auto.mask_token_id, auto.unk_token_id) == (
        fast.cls_token_id, fast.sep_token_id, fast.pad_token_id, fast.mask_token_id, fast.unk_token_id)
    for text in LINES:
        assert auto(text)["input_ids"] == fast(text)["input_ids"], text
        assert generic(text)["input_ids"] == fast(text)["input_ids"], text
    enc = auto(LINES[:8], LINES[8:16], padding=True, truncation=True, max_length=32)
    assert enc["input_ids"] == fast(LINES[:8], LINES[8:16], padding=True, truncation=True,
                                    max_length=32)["input_ids"]
    assert auto.model_max_length == fast.model_max_length
    # Every field transformers returns, not only the ids: a pair's token types (what BLEURT's pairs need), the
    # types under padding, and which side longest_first trims when both sides are as long (8 pieces each here).
    assert len(fast.tokenize("a b c d")) == len(fast.tokenize("w x y z"))
    for args, kwargs in [(("a b c d", "w x y z"), dict(truncation=True, max_length=8)),
                         ((["one", "two three four five"], ["x", "y"]), dict(padding=True)),
                         ((LINES[:8], LINES[8:16]), dict(padding=True, truncation=True, max_length=32)),
                         # without special tokens a pair still has types 0 then 1 (as transformers' fast class)
                         (("a b c d", "w x y z"), dict(add_special_tokens=False)),
                         # padding to max_length, not to the longest row, with padding counted as special
                         ((["one", "two three four five"], ["x", "y"]),
                          dict(padding="max_length", max_length=16, return_special_tokens_mask=True)),
                         ((("one", "two three four five"),), dict(padding="longest"))]:  # a tuple is a batch too
        assert dict(auto(*args, **kwargs)) == dict(fast(*args, **kwargs)) == dict(slow(*args, **kwargs)), kwargs
    assert auto.encode("a b c d", "w x y z") == fast.encode("a b c d", "w x y z") == slow.encode("a b c d", "w x y z")
    # A token the vocabulary lacks is <unk>'s id; an id read from a tensor (a numpy int) is one token, as an int is
    # (transformers 4.57 itself fails on the numpy int).
    assert auto.convert_tokens_to_ids("no-such-piece") == fast.convert_tokens_to_ids("no-such-piece") == (
        slow.convert_tokens_to_ids("no-such-piece"))
    cls = np.int64(auto.cls_token_id)
    assert auto.convert_ids_to_tokens(int(cls)) == fast.convert_ids_to_tokens(cls) == slow.convert_ids_to_tokens(cls)
    hf_slow = transformers.RemBertTokenizer.from_pretrained(str(tok_dir))
    for text in LINES[:80]:
        assert hf_slow(text)["input_ids"] == slow(text)["input_ids"], text


@pytest.mark.interop
def test_longest_first_keeps_what_transformers_keeps_for_every_pair_of_lengths(tok_dir: Path, pair) -> None:
    """longest_first must leave each sequence as long as transformers' fast class does; cutting one token at a
    time from the longer gave an odd budget's last token to the second sequence even when the first was longer."""
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    for i in range(1, 7):
        for j in range(1, 7):
            a, b = " ".join(words[:i]), " ".join(words[-j:])
            for max_length in range(3, 14):
                expected = auto(a, b, truncation=True, max_length=max_length)
                for tok in pair:
                    assert dict(tok(a, b, truncation=True, max_length=max_length)) == dict(expected), (
                        i, j, max_length)
