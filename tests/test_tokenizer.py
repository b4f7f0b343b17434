"""SentencePiece -> tokenizer.json: ids equal SentencePiece's on a multilingual corpus, for models the
project trains (unigram and BPE, nmt_nfkc and identity, byte_fallback on and off, user-defined and control
special pieces); every difference must fall in a documented class, which the tests reproduce exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from rembert_convert.cli import main
from rembert_ref.errors import UserError
from testkit.spm_models import handmade_unigram_model, probe_corpus, train_sentencepiece
from converters.tokenizer import (
    DIFFERENCE_CLASSES,
    build_normalizer,
    build_tokenizer,
    convert_tokenizer,
    measure_agreement,
    nfc_helps,
    read_sentencepiece,
    reference_ids,
)

# name -> training options. Sizes differ so that no two models share a vocabulary size.
MODELS = {
    "unigram-nfkc": dict(model_type="unigram", vocab_size=512),
    "unigram-identity-bytes": dict(model_type="unigram", vocab_size=803, normalization="identity",
                                   byte_fallback=True),
    "unigram-nfkc-control": dict(model_type="unigram", vocab_size=517, user_defined_symbols=("<url>", "@@"),
                                 control_symbols=("[CLS]", "[SEP]", "[MASK]")),
    "bpe-nfkc-bytes": dict(model_type="bpe", vocab_size=811, byte_fallback=True),
    "bpe-identity": dict(model_type="bpe", vocab_size=523, normalization="identity"),
    "bpe-nfkc-user": dict(model_type="bpe", vocab_size=529, user_defined_symbols=("[CLS]", "[SEP]", "[MASK]",
                                                                                    "<url>", "\u2581\"")),
}
LINES = probe_corpus(400)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spm")
    return {name: train_sentencepiece(root / f"{name}.model", **opts) for name, opts in MODELS.items()}


def _load(path: Path) -> tuple:
    info = read_sentencepiece(path)
    # Through JSON, so the test sees exactly what tokenizer.json holds.
    tokenizer = Tokenizer.from_str(build_tokenizer(info).to_str())
    return info, tokenizer, spm.SentencePieceProcessor(model_file=str(path))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ids_equal_sentencepiece_on_probe_corpus(models: dict[str, Path], name: str) -> None:
    info, tokenizer, sp = _load(models[name])
    agreement = measure_agreement(info, tokenizer, LINES)
    print(f"{name}: {agreement.equal}/{agreement.total} lines equal, classes {agreement.classes}")
    assert agreement.unexplained == []
    assert set(agreement.classes) <= set(DIFFERENCE_CLASSES)
    if info.proto.normalizer_spec.precompiled_charsmap:
        assert agreement.rate > 0.85
    else:  # no charsmap: nothing is left that tokenizers cannot express
        assert agreement.classes == {}
    # Lines without special-token strings are compared with plain sp.encode, nothing in between.
    plain = [t for t in LINES if not any(s in t for s in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "<unk>"))]
    assert len(plain) > 300
    for text in plain:
        if tokenizer.normalizer.normalize_str(text) == sp.normalize(text) and "<url>" not in text:
            assert tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text), text


@pytest.mark.parametrize("name", ["unigram-nfkc", "bpe-nfkc-bytes", "unigram-nfkc-control"])
def test_special_ids_come_from_the_model(models: dict[str, Path], name: str) -> None:
    info, tokenizer, sp = _load(models[name])
    for piece in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "<unk>"):
        assert tokenizer.token_to_id(piece) == sp.piece_to_id(piece) < sp.get_piece_size()
    assert tokenizer.get_vocab_size(with_added_tokens=True) == sp.get_piece_size()  # nothing appended
    enc = tokenizer.encode("a b", "c")
    cls, sep = sp.piece_to_id("[CLS]"), sp.piece_to_id("[SEP]")
    assert enc.ids == [cls] + sp.encode("a b") + [sep] + sp.encode("c") + [sep]
    assert enc.type_ids == [0] * (len(sp.encode("a b")) + 2) + [1] * (len(sp.encode("c")) + 1)
    # [MASK] takes the space before it, as in RemBERT; the text around it is SentencePiece's.
    mask = sp.piece_to_id("[MASK]")
    assert tokenizer.encode("Paris is the [MASK] of", add_special_tokens=False).ids == (
        sp.encode("Paris is the") + [mask] + sp.encode(" of"))


def test_control_pieces_are_never_matched_by_the_model(models: dict[str, Path]) -> None:
    # With special tokens split like text (transformers' split_special_tokens), control pieces ([PAD]) and
    # <unk> must not come out of the model, and user-defined ones must, as in SentencePiece. (Limit, in
    # converters/tokenizer.py: a control string holding a character unknown to the model can still match.)
    info, tokenizer, sp = _load(models["unigram-nfkc"])
    tokenizer.encode_special_tokens = True
    for text in ["[CLS] x [SEP]", "<unk>", "a[MASK]b", "x <unk>  <unk>y"]:
        assert tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text), text


def _normalizes_alike(tokenizer: Tokenizer, sp: spm.SentencePieceProcessor, text: str) -> bool:
    return tokenizer.normalizer.normalize_str(text) == sp.normalize(text)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_property_random_unicode(models: dict[str, Path], text: str) -> None:
    for name in ("unigram-nfkc", "bpe-identity", "unigram-identity-bytes"):
        info, tokenizer, sp = _cached(models, name)
        agreement = measure_agreement(info, tokenizer, [text])
        assert agreement.unexplained == [], (name, text)
        if agreement.classes:
            # The only class random text may hit is the charsmap's, and only where normalization differs.
            assert set(agreement.classes) <= {"precompiled-grapheme", "nfc-composition", "unigram-float32-tie"}
        if not info.proto.normalizer_spec.precompiled_charsmap and "unigram" not in name:
            assert agreement.equal == 1, (name, text)
        # Decoding SentencePiece's own ids gives SentencePiece's text.
        ids = sp.encode(text)
        assert _decodes_alike(tokenizer.decode(ids, skip_special_tokens=False), sp.decode(ids), text), (name, text)


def _decodes_alike(ours: str, theirs: str, text: str) -> bool:
    # Documented decode limit (converters/tokenizer.py): text that starts with a literal "▁" (kept by
    # identity normalization) decodes with the leading spaces SentencePiece drops piece by piece.
    if text.lstrip(" ").startswith("▁"):
        return ours.lstrip(" ") == theirs.lstrip(" ")
    return ours == theirs


_CACHE: dict[str, tuple] = {}


def _cached(models: dict[str, Path], name: str) -> tuple:
    if name not in _CACHE:
        _CACHE[name] = _load(models[name])
    return _CACHE[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decode_round_trips_as_sentencepiece(models: dict[str, Path], name: str) -> None:
    info, tokenizer, sp = _load(models[name])
    for text in LINES:
        ids = sp.encode(text)
        assert _decodes_alike(tokenizer.decode(ids, skip_special_tokens=False), sp.decode(ids), text), text
    cls, sep = sp.piece_to_id("[CLS]"), sp.piece_to_id("[SEP]")
    ids = sp.encode("hello world")
    assert tokenizer.decode([cls] + ids + [sep], skip_special_tokens=True) == sp.decode(ids)


# -- the documented difference classes, reproduced exactly ------------------------------------------------


def test_tie_class_reproducer(tmp_path: Path) -> None:
    # "..." with "." at score a and ".." at 2a: both segmentations score exactly the same in real
    # arithmetic; SentencePiece's float32 sums break the tie one way, tokenizers' float64 sums the other.
    a, space = -5.6014724, -4.6444073
    path = handmade_unigram_model(tmp_path / "tie.model", [("▁", space), (".", a), ("..", 2 * a), ("x", -5.0)])
    info, tokenizer, sp = _load(path)
    assert sp.encode("...", out_type=str) == ["▁", "..", "."]
    assert tokenizer.encode("...", add_special_tokens=False).tokens == ["▁", ".", ".."]
    assert measure_agreement(info, tokenizer, ["..."]).classes == {"unigram-float32-tie": 1}
    # A real score difference is never called a tie.
    path = handmade_unigram_model(tmp_path / "no_tie.model", [("▁", space), (".", a), ("..", 2 * a + 0.01)])
    info, tokenizer, sp = _load(path)
    assert tokenizer.encode("...", add_special_tokens=False).ids == sp.encode("...")


def test_unigram_user_defined_pieces_win_as_in_sentencepiece(tmp_path: Path) -> None:
    """SentencePiece prefers the longest user-defined piece ('ab' over 'a' + 'b'): their scores must say so."""
    path = handmade_unigram_model(tmp_path / "user.model", [("▁", -1.0), ("c", -2.0)], user_defined=["ab", "a", "b"])
    info, tokenizer, sp = _load(path)
    for text in ["ab", "c ab c", "abab", "aab"]:
        assert tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text), text
    assert sp.encode("ab", out_type=str) == ["▁", "ab"]


def test_grapheme_class_reproducer(models: dict[str, Path]) -> None:
    info, tokenizer, sp = _load(models["unigram-nfkc"])
    plain = build_normalizer(info, compose_first=False)
    # u + diaeresis + acute is one grapheme cluster of 5 bytes: tokenizers' Precompiled alone takes the
    # shortest rule ("u\u0308" -> "ü") and drops the acute; SentencePiece takes the longest (-> "ǘ").
    # 'drop': the shortest rule ("o\u0323" -> "ọ") covers only the start of the cluster; the rest is lost.
    for text, expected, alone in (("u\u0308\u0301", "▁\u01d8", "▁\u00fc"), ("o\u0323\u0302", "▁\u1ed9", "▁\u1ecd")):
        assert sp.normalize(text) == expected
        assert plain.normalize_str(text) == alone
        # Composing first (NFC, chosen by nfc_helps for nmt_nfkc) hands Precompiled one precomposed letter.
        assert tokenizer.normalizer.normalize_str(text) == expected
        assert tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text)
    # What NFC cannot compose still loses the rest of its cluster: full-width A + acute.
    text = "\uff21\u0301"
    assert sp.normalize(text) == "▁\u00c1"
    assert tokenizer.normalizer.normalize_str(text) == plain.normalize_str(text) == "▁A"
    assert measure_agreement(info, tokenizer, [text]).classes == {"precompiled-grapheme": 1}
    # Precomposed input (NFC, as most real text is) is not affected.
    for text in ("\u01d8", "\u1ed9 Tiếng Việt"):
        assert tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text)


def test_a_normalization_difference_outside_a_cluster_is_reported_not_explained(models: dict[str, Path]) -> None:
    """precompiled-grapheme stands for Precompiled's per-cluster rule, which differs from SentencePiece only
    inside a cluster of more than one character: any other normalization difference (a tokenizer.json with a
    normalizer bug) is an unexplained line, on a model with a charsmap as on one without."""
    from tokenizers import normalizers

    for name in ("unigram-nfkc", "bpe-identity"):
        info, tokenizer, _ = _load(models[name])
        tokenizer.normalizer = normalizers.Sequence([tokenizer.normalizer, normalizers.Replace("a", "e")])
        agreement = measure_agreement(info, tokenizer, ["a cat sat", "\uff21\u0301"])
        assert agreement.unexplained == ["a cat sat"], name
    info, tokenizer, _ = _load(models["unigram-nfkc"])
    assert measure_agreement(info, tokenizer, ["a cat sat", "\uff21\u0301"]).classes == {"precompiled-grapheme": 1}


def test_nfc_helps_is_measured(models: dict[str, Path]) -> None:
    info, tokenizer, sp = _load(models["unigram-nfkc"])
    assert nfc_helps(info)  # nmt_nfkc: NFD text goes from 373 to 440 of 441 probe lines
    assert json.loads(tokenizer.to_str())["normalizer"]["normalizers"][0]["type"] == "NFC"
    identity, _, _ = _load(models["bpe-identity"])  # no charsmap: nothing to compose for
    steps = json.loads(build_tokenizer(identity).to_str())["normalizer"]["normalizers"]
    assert not any(step["type"] == "NFC" for step in steps)
    # The price, documented as nfc-composition: NFC reorders and composes text SentencePiece keeps as written.
    text = "\u00f4\u0323"
    assert sp.normalize(text) == "▁\u00f4\u0323" != tokenizer.normalizer.normalize_str(text)
    assert measure_agreement(info, tokenizer, [text]).classes == {"nfc-composition": 1}


def test_bpe_user_defined_class_reproducer(models: dict[str, Path]) -> None:
    info, tokenizer, sp = _load(models["bpe-nfkc-user"])
    assert sp.encode("see <url> now", out_type=str)[:6] != tokenizer.encode(
        "see <url> now", add_special_tokens=False).tokens[:6]
    assert measure_agreement(info, tokenizer, ["see <url> now"]).classes == {"bpe-user-defined": 1}
    # The symbol itself stays whole; the text on each side is encoded as a sentence of its own.
    url = sp.piece_to_id("<url>")
    assert tokenizer.encode("a<url>b", add_special_tokens=False).ids == sp.encode("a") + [url] + sp.encode("b")


def test_bpe_user_defined_piece_spelled_out_by_the_normalizer_is_the_bpe_class(tmp_path: Path) -> None:
    path = train_sentencepiece(tmp_path / "bpe.model", model_type="bpe",
                               user_defined_symbols=["[CLS]", "[SEP]", "[MASK]", "hello"])
    info, tokenizer, sp = _load(path)
    text = "\uff48\uff45\uff4c\uff4c\uff4f"  # full-width: nmt_nfkc spells out 'hello'
    assert sp.piece_to_id("hello") in sp.encode(text)
    assert sp.piece_to_id("hello") not in tokenizer.encode(text, add_special_tokens=False).ids
    assert measure_agreement(info, tokenizer, [text]).classes == {"bpe-user-defined": 1}


def test_user_defined_charsmap_class_reproducer(tmp_path: Path) -> None:
    """SentencePiece matches user-defined pieces in the raw text, before the charsmap."""
    path = train_sentencepiece(tmp_path / "u.model", user_defined_symbols=["[CLS]", "[SEP]", "[MASK]", "\u2122"])
    info, tokenizer, sp = _load(path)
    assert sp.encode("\u2122", out_type=str) == ["\u2581", "\u2122"]
    assert tokenizer.encode("\u2122", add_special_tokens=False).tokens != ["\u2581", "\u2122"]
    agreement = measure_agreement(info, tokenizer, ["\u2122", "Brand\u2122 name", "[MASK] plain text"])
    assert agreement.classes == {"user-defined-charsmap": 2} and not agreement.unexplained


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_deleted_text_prefix_class_reproducer(tmp_path: Path, model_type: str) -> None:
    path = train_sentencepiece(tmp_path / "k.model", model_type=model_type, remove_extra_whitespaces=False)
    info, tokenizer, sp = _load(path)
    assert sp.encode("\x07", out_type=str) == ["\u2581"] and tokenizer.encode("\x07").tokens == ["[CLS]", "[SEP]"]
    agreement = measure_agreement(info, tokenizer, ["\x07", "\x0b\x1f", "a \x07 b"])
    assert agreement.classes == {"deleted-text-prefix": 2} and agreement.equal == 1


def test_denormalization_rules_are_refused(tmp_path: Path) -> None:
    rules = tmp_path / "denormalize.tsv"
    rules.write_text("78\t58 58\n")  # 'x' -> 'XX' when decoding: no tokenizer.json decoder can say it
    path = train_sentencepiece(tmp_path / "d.model", denormalization_rule_tsv=str(rules))
    with pytest.raises(UserError, match="denormalization rules") as err:
        read_sentencepiece(path)
    assert "\n" not in str(err.value)


def test_bpe_user_defined_piece_beginning_with_space_symbol_is_exact(models: dict[str, Path], tmp_path) -> None:
    """'▁"' (a quote after a space) is matched in the normalized text, as SentencePiece matches it: exact, and
    so flagged in both files (transformers 4.57 reads the flag from tokenizer.json, 5.x from tokenizer_config)."""
    info, tokenizer, sp = _load(models["bpe-nfkc-user"])
    quote = sp.piece_to_id("\u2581\"")
    for text in ['he said "no"', '"yes" and "no"', 'a  "b"', 'x"y']:
        assert tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text), text
    assert quote in sp.encode('he said "no"')
    flags = {t.content: t.normalized for t in tokenizer.get_added_tokens_decoder().values() if not t.special}
    assert flags == {"\u2581\"": True, "<url>": False}
    convert_tokenizer(models["bpe-nfkc-user"], tmp_path / "t", probe_lines=5)
    config = json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"][str(quote)]["normalized"] is True
    assert config["added_tokens_decoder"][str(sp.piece_to_id("<url>"))]["normalized"] is False


# -- files, errors, CLI -----------------------------------------------------------------------------------


def test_convert_writes_deterministic_files(models: dict[str, Path], tmp_path: Path) -> None:
    first = convert_tokenizer(models["unigram-nfkc"], tmp_path / "a", probe_lines=20)
    second = convert_tokenizer(models["unigram-nfkc"], tmp_path / "b", probe_lines=20)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["sentencepiece.model", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first.files == second.files
    config = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is False and config["keep_accents"] is True
    assert config["unk_token"] == "<unk>" and config["pad_token"] == "[PAD]"
    assert config["added_tokens_decoder"][str(first.special_ids["[MASK]"])]["lstrip"] is True
    assert (tmp_path / "a" / "sentencepiece.model").read_bytes() == models["unigram-nfkc"].read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_refuses_non_empty_output_without_force(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty; pass --force"):
        convert_tokenizer(models["unigram-nfkc"], out, probe_lines=5)
    assert (out / "keep.txt").exists()
    convert_tokenizer(models["unigram-nfkc"], out, force=True, probe_lines=5)
    assert not (out / "keep.txt").exists() and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("content", [b"", b"not a model at all\n", bytes(range(256)) * 3])
def test_corrupt_file_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_sentencepiece(path)
    assert "not a valid SentencePiece model" in str(err.value) and "\n" not in str(err.value)


def test_model_without_cls_is_refused(tmp_path: Path) -> None:
    path = train_sentencepiece(tmp_path / "plain.model", vocab_size=509, user_defined_symbols=())
    with pytest.raises(UserError, match=r"no \[CLS\] or \[SEP\] piece"):
        read_sentencepiece(path)


def test_cli(models: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["tokenizer", str(models["bpe-identity"]), "-o", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "ids equal to SentencePiece on" in result.output and "(100.00%)" in result.output
    again = runner.invoke(main, ["tokenizer", str(models["bpe-identity"]), "-o", str(tmp_path / "t")])
    assert again.exit_code == 2 and again.output.count("\n") == 1 and "--force" in again.output
    bad = tmp_path / "bad.model"
    bad.write_text("hello")
    result = runner.invoke(main, ["tokenizer", str(bad), "-o", str(tmp_path / "u")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    help_text = runner.invoke(main, ["tokenizer", "--help"]).output
    assert "convert-rembert tokenizer examples/tiny-rembert/sentencepiece.model -o" in help_text


def test_reference_ids_split_special_strings(models: dict[str, Path]) -> None:
    _, _, sp = _load(models["unigram-nfkc"])
    mask = sp.piece_to_id("[MASK]")
    assert reference_ids(sp, "a [MASK]b", ["[MASK]"]) == sp.encode("a") + [mask] + sp.encode("b")


def test_a_piece_that_is_not_utf8_is_one_line_error(tmp_path):
    """protobuf returns a non-UTF-8 string field as bytes; that is a bad model (exit 2), not a crash."""
    data = (Path(__file__).parent.parent / "examples" / "tiny-rembert" / "sentencepiece.model").read_bytes()
    at = data.index("\u2581".encode())  # the first piece text holding the word-start mark: 3 bytes
    broken = tmp_path / "broken.model"
    broken.write_bytes(data[:at] + b"\xff\xfe\xfd" + data[at + 3:])
    with pytest.raises(UserError, match=r"piece \d+ is not UTF-8 text"):
        read_sentencepiece(broken)


def test_a_trigger_in_the_line_excuses_no_other_difference(tmp_path: Path) -> None:
    """The classes that stand for a trigger explain a segment only without the trigger: an unrelated bug (here a
    piece the fast model can no longer pick) next to a '™' or in another segment stays unexplained."""
    path = train_sentencepiece(tmp_path / "u.model", user_defined_symbols=["[CLS]", "[SEP]", "[MASK]", "\u2122"])
    info, tokenizer, sp = _load(path)
    word = "language"
    piece = max(sp.encode(word, out_type=str), key=len)
    assert len(piece) > 2
    broken = json.loads(tokenizer.to_str())
    for entry in broken["model"]["vocab"]:
        if entry[0] == piece:
            entry[1] = -1000.0  # a bug: the fast model never picks this piece
    broken = Tokenizer.from_str(json.dumps(broken))
    assert measure_agreement(info, tokenizer, [f"\u2122 {word}", f"\u2122[SEP]{word}"]).classes == {
        "user-defined-charsmap": 2}
    agreement = measure_agreement(info, broken, [word, f"\u2122 {word}", f"\u2122[SEP]{word}", f"{word}[SEP]\u2122"])
    assert agreement.classes == {} and len(agreement.unexplained) == 4
    # Taken out, the trigger leaves a space (as SentencePiece ends its piece there), not nothing: text on both
    # sides of it must not be judged as one word.
    assert measure_agreement(info, tokenizer, ["[MA\u2122SK]", "x\u2122y", "ab\u2122cd ef"]).classes == {
        "user-defined-charsmap": 3}


def test_agreement_is_measured_on_every_probe_line(models: dict[str, Path], tmp_path: Path) -> None:
    from converters.tokenizer import probe_corpus as shipped_probe_corpus

    report = convert_tokenizer(models["unigram-nfkc"], tmp_path / "all")
    assert report.agreement.total == len(shipped_probe_corpus()) > 400
    assert convert_tokenizer(models["unigram-nfkc"], tmp_path / "some", probe_lines=7).agreement.total == 7
