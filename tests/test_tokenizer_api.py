"""The reference tokenizers' API (slow on sentencepiece, fast on tokenizers): they agree with each other,
with SentencePiece, and (interop) with Hugging Face transformers loading the converter's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rembert_ref.errors import UserError
from testkit.spm_models import probe_corpus
from rembert_ref.tokenization import RemBertTokenizer, RemBertTokenizerFast

LINES = probe_corpus(150, seed=7)


def _same_normalization(slow: RemBertTokenizer, fast: RemBertTokenizerFast, text: str) -> bool:
    return fast.backend_tokenizer.normalizer.normalize_str(text) == slow.sp_model.normalize(text)


def test_slow_and_fast_agree_on_the_corpus(pair) -> None:
    slow, fast = pair
    differ = [t for t in LINES if slow(t)["input_ids"] != fast(t)["input_ids"]]
    # Only lines the charsmap class explains (tests/test_tokenizer.py reproduces it).
    assert all(not _same_normalization(slow, fast, t) for t in differ)
    assert len(differ) < 0.15 * len(LINES)
    for text in LINES[:40]:
        assert slow.tokenize(text) == fast.tokenize(text) or not _same_normalization(slow, fast, text)


def test_single_pair_and_batch_with_padding_and_truncation(pair) -> None:
    slow, fast = pair
    texts = ["Paris is the [MASK] of France.", "hello", "日本語のテキスト  and more words here"]
    pairs = ["second", "a much longer second sequence of words", ""]
    for kwargs in [dict(), dict(padding=True), dict(padding="max_length", max_length=24, truncation=True),
                   dict(truncation="only_first", max_length=64), dict(truncation=True, max_length=7)]:
        a, b = slow(texts, pairs, **kwargs), fast(texts, pairs, **kwargs)
        assert dict(a) == dict(b), kwargs
    enc = fast(texts, padding=True)
    width = max(len(fast(t)["input_ids"]) for t in texts)
    assert all(len(row) == width for row in enc["input_ids"])
    assert [row.count(1) for row in enc["attention_mask"]] == [len(fast(t)["input_ids"]) for t in texts]
    assert enc["input_ids"][1][-1] == fast.pad_token_id
    enc = fast("a b c d e f g h", "x y z", truncation=True, max_length=9)
    assert len(enc["input_ids"]) == 9 and enc["token_type_ids"].count(1) >= 2  # longest_first trims A first
    for tok in (slow, fast):
        enc = tok("a b c", "w x y z q r s t", truncation="only_second", max_length=10)
        assert enc["token_type_ids"].count(0) == len(tok("a b c")["input_ids"]) and len(enc["input_ids"]) == 10
        with pytest.raises(UserError, match="longest_first"):
            tok("a b c d e f g h", "x", truncation="only_second", max_length=6)
    single = fast("hello world")
    assert single["input_ids"][0] == fast.cls_token_id and single["input_ids"][-1] == fast.sep_token_id
    assert fast.encode("hello world") == single["input_ids"]


def test_special_token_helpers(pair) -> None:
    slow, fast = pair
    a, b = [11, 12, 13], [21, 22]
    for tok in (slow, fast):
        cls, sep = tok.cls_token_id, tok.sep_token_id
        assert tok.build_inputs_with_special_tokens(a) == [cls, *a, sep]
        assert tok.build_inputs_with_special_tokens(a, b) == [cls, *a, sep, *b, sep]
        assert tok.get_special_tokens_mask(a, b) == [1, 0, 0, 0, 1, 0, 0, 1]
        built = tok.build_inputs_with_special_tokens(a, b)
        assert tok.get_special_tokens_mask(built, already_has_special_tokens=True) == [1, 0, 0, 0, 1, 0, 0, 1]
        assert tok.create_token_type_ids_from_sequences(a, b) == [0, 0, 0, 0, 0, 1, 1, 1]
        assert tok.convert_tokens_to_ids(["[CLS]", "[MASK]", "<unk>"]) == [cls, tok.mask_token_id,
                                                                           tok.unk_token_id]
        assert tok.convert_ids_to_tokens(cls) == "[CLS]"
        # Ids already framed are one sequence: a second would be ambiguous (transformers raises too).
        with pytest.raises(UserError, match="token_ids_1 must be None"):
            tok.get_special_tokens_mask(built, b, already_has_special_tokens=True)
    assert slow.get_vocab() == fast.get_vocab() and len(slow) == len(fast) == 512


def test_save_into_the_folder_it_was_loaded_from_however_spelled(pair, tmp_path: Path, monkeypatch) -> None:
    slow, fast = pair
    fast.save_pretrained(tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    for cls in (RemBertTokenizerFast, RemBertTokenizer):
        loaded = cls.from_pretrained("tok")  # relative here, absolute below: the same folder
        before = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}
        loaded.save_pretrained(tmp_path / "tok")
        assert {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()} == before


def test_save_after_the_folder_it_was_loaded_from_is_gone_says_so_and_writes_nothing(pair, tmp_path: Path) -> None:
    """Saving copies tokenizer_config.json and special_tokens_map.json from that folder: without it the saved
    tokenizer would lose its model_max_length and special tokens, so it is refused before anything is written."""
    slow, fast = pair
    fast.save_pretrained(tmp_path / "tok")
    for cls in (RemBertTokenizer, RemBertTokenizerFast):
        shutil.copytree(tmp_path / "tok", tmp_path / "source")
        loaded = cls.from_pretrained(tmp_path / "source")
        shutil.rmtree(tmp_path / "source")
        with pytest.raises(UserError, match="is gone"):
            loaded.save_pretrained(tmp_path / "again")
        assert not (tmp_path / "again").exists()


def test_truncation_that_cannot_fit_is_refused_by_both_classes(pair) -> None:
    """A request no truncation can meet must be an error, not an over-long row or sequences cut past empty."""
    for tok in pair:
        with pytest.raises(UserError, match="only_second"):
            tok("a b c d e f g h", truncation="only_second", max_length=4)  # no second sequence to cut
        with pytest.raises(UserError, match="shorter than the special tokens"):
            tok("a b c", "x y", truncation=True, max_length=2)  # a pair needs 3 special tokens


def test_decode_and_batch_decode(pair) -> None:
    slow, fast = pair
    for text in LINES[:60]:
        ids = slow.sp_model.encode(text)
        assert slow.decode(ids) == fast.decode(ids) == slow.sp_model.decode(ids), text
    batch = fast(["hello world", "日本語"], padding=True)["input_ids"]
    assert fast.batch_decode(batch, skip_special_tokens=True) == ["hello world", "日本語"]
    assert slow.batch_decode(batch, skip_special_tokens=True) == ["hello world", "日本語"]
    assert fast.decode(batch[0]) == slow.decode(batch[0]) == "[CLS] hello world[SEP]"


def test_save_and_reload(pair, tmp_path: Path) -> None:
    slow, fast = pair
    fast.save_pretrained(tmp_path / "fast")
    slow.save_pretrained(tmp_path / "slow")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.model"):
        assert (tmp_path / "fast" / name).is_file() and (tmp_path / "slow" / name).is_file()
    again = RemBertTokenizerFast.from_pretrained(tmp_path / "fast")
    assert again(LINES[:20])["input_ids"] == fast(LINES[:20])["input_ids"]
    again_slow = RemBertTokenizer.from_pretrained(tmp_path / "slow")
    assert again_slow(LINES[:20])["input_ids"] == slow(LINES[:20])["input_ids"]
    (tmp_path / "v").mkdir()
    (path,) = fast.save_vocabulary(tmp_path / "v", filename_prefix="x")
    assert Path(path).name == "x-sentencepiece.model"
    assert Path(path).read_bytes() == (tmp_path / "fast" / "sentencepiece.model").read_bytes()
    with pytest.raises(UserError, match="has no tokenizer.json"):
        RemBertTokenizerFast.from_pretrained(tmp_path / "v")
    (tmp_path / "only-json").mkdir()
    shutil.copy(tmp_path / "fast" / "tokenizer.json", tmp_path / "only-json")
    with pytest.raises(UserError, match="only-json has no sentencepiece.model; write it with: convert-rembert"):
        RemBertTokenizer.from_pretrained(tmp_path / "only-json")


def test_bad_options_are_user_errors(pair) -> None:
    _, fast = pair
    with pytest.raises(UserError, match="padding="):
        fast("x", padding="sideways")
    with pytest.raises(UserError, match="truncation="):
        fast("x", truncation="middle")
    with pytest.raises(UserError, match="return_tensors="):
        fast(["x"], return_tensors="jax")
    with pytest.raises(UserError, match="one pair per text"):
        fast(["x", "y"], ["z"])


def test_json_member_reads_what_json_loads_reads() -> None:
    from rembert_ref.tokenization import json_member

    document = {"version": "1.0", "added_tokens": [{"id": 0, "content": "}{\":,"}],
                "model": {"vocab": [["\"unk_id\": 7", -1.5], ["b", 0.0]], "type": "Unigram", "unk_id": 3},
                "other": None}
    for text in (json.dumps(document), json.dumps(document, indent=2), json.dumps(document, separators=(",", ":"))):
        assert json_member(text, "model", "unk_id") == 3  # after the vocabulary, whose text mentions the key
        assert json_member(text, "model", "vocab") == document["model"]["vocab"]
        assert json_member(text, "added_tokens") == document["added_tokens"]
        assert json_member(text, "other") is None
        for path in (("model", "unk_token"), ("missing",), ("version", "x")):
            with pytest.raises(KeyError):
                json_member(text, *path)


def test_fast_tokenizer_finds_the_unknown_token(pair) -> None:
    _, fast = pair
    assert fast.unk_token == "<unk>"
    assert fast.unk_token_id == fast.backend_tokenizer.token_to_id("<unk>")


def test_model_max_length_survives_conversion_and_loading(tok_dir: Path, tmp_path: Path) -> None:
    """A BLEURT's max_seq_length becomes model_max_length; both reference classes load it and truncate to it."""
    from converters.tokenizer import convert_tokenizer

    convert_tokenizer(tok_dir / "sentencepiece.model", tmp_path / "short", probe_lines=1, model_max_length=16)
    long_text = " ".join(LINES[:20])
    for cls in (RemBertTokenizer, RemBertTokenizerFast):
        tokenizer = cls.from_pretrained(tmp_path / "short")
        assert tokenizer.model_max_length == 16
        assert len(tokenizer(long_text, truncation=True)["input_ids"]) == 16


def _bpe_with_user_defined(tmp_path: Path, pieces: tuple[str, ...]) -> tuple[Path, RemBertTokenizer,
                                                                            RemBertTokenizerFast]:
    from converters.tokenizer import convert_tokenizer
    from testkit.spm_models import train_sentencepiece

    model = train_sentencepiece(tmp_path / "bpe.model", model_type="bpe", vocab_size=531,
                                user_defined_symbols=("[CLS]", "[SEP]", "[MASK]", *pieces))
    convert_tokenizer(model, tmp_path / "tok", probe_lines=1)
    return model, RemBertTokenizer.from_pretrained(tmp_path / "tok"), RemBertTokenizerFast.from_pretrained(
        tmp_path / "tok")


def test_user_defined_pieces_are_kept_whole_longest_first_and_are_not_special(tmp_path: Path) -> None:
    """In a BPE model, user-defined pieces are matched before the model runs, as SentencePiece does: the longest
    of two that start alike wins, and none of them counts as a special token (they stay in decode)."""
    import sentencepiece

    model, slow, fast = _bpe_with_user_defined(tmp_path, ("<u>", "<u>v", "<url>"))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    for text in ("a<u>vb", "a<u>b", "see <url> and <u>v"):
        assert slow(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
    # tokenizer.json keeps the longer piece whole too; around it a `▁` may differ (the `bpe-user-defined` class).
    assert sp.piece_to_id("<u>v") in fast("a<u>vb")["input_ids"]
    ids = fast("see <url> here")["input_ids"]
    url = sp.piece_to_id("<url>")
    assert url in ids
    for tokenizer in (slow, fast):
        mask = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
        assert mask == [1 if i in (fast.cls_token_id, fast.sep_token_id) else 0 for i in ids]
        assert "<url>" in tokenizer.decode(ids, skip_special_tokens=True)


def test_control_pieces_in_the_text_are_split_longest_first_by_both_classes(tmp_path: Path) -> None:
    """Control pieces are added tokens of tokenizer.json; the slow class splits on them as its matcher does."""
    from converters.tokenizer import convert_tokenizer
    from testkit.spm_models import train_sentencepiece

    model = train_sentencepiece(tmp_path / "control.model", vocab_size=533, user_defined_symbols=(),
                                control_symbols=("[CLS]", "[SEP]", "[MASK]", "<x>", "<x>y"))
    convert_tokenizer(model, tmp_path / "tok", probe_lines=1)
    slow, fast = RemBertTokenizer.from_pretrained(tmp_path / "tok"), RemBertTokenizerFast.from_pretrained(
        tmp_path / "tok")
    for text in ("a<x>yb", "a<x>b", "<x>y<x>"):
        assert slow.tokenize(text) == fast.tokenize(text), text
    assert "<x>y" in fast.tokenize("a<x>yb")


def test_decode_keeps_a_piece_that_spells_unk_inside_it(tmp_path: Path) -> None:
    """Only the <unk> token itself decodes to SentencePiece's unknown surface, not a piece that contains the
    text "<unk>"."""
    import sentencepiece

    model, slow, fast = _bpe_with_user_defined(tmp_path, ("[<unk>]",))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    ids = sp.encode("a [<unk>] b")
    assert sp.piece_to_id("[<unk>]") in ids
    assert slow.decode(ids) == fast.decode(ids) == sp.decode(ids) == "a [<unk>] b"


def test_decode_keeps_the_first_space_of_a_model_without_the_dummy_prefix(tmp_path) -> None:
    """Only a model that adds a dummy prefix may lose the first space in decoding; stripping it always would
    change text that begins with a space under a model trained without one."""
    import sentencepiece as spm

    from converters.tokenizer import convert_tokenizer
    from testkit.spm_models import train_sentencepiece

    model = train_sentencepiece(tmp_path / "m.model", vocab_size=512, normalization="identity",
                                add_dummy_prefix=False, remove_extra_whitespaces=False)
    convert_tokenizer(model, tmp_path / "tok")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    slow = RemBertTokenizer.from_pretrained(tmp_path / "tok")
    fast = RemBertTokenizerFast.from_pretrained(tmp_path / "tok")
    for text in (" the start", "  two spaces", "no space first"):
        ids = sp.encode(text)
        assert slow.decode(ids) == fast.decode(ids) == sp.decode(ids) == text, text
