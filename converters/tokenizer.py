"""SentencePiece `.model` -> fast tokenizer (`tokenizer.json`) plus the Hugging Face tokenizer files.

Everything is derived from the model file's own spec and nothing is added that SentencePiece does not do
(unlike transformers' RemBertConverter, which rewrites quotes, lowercases, strips accents and collapses
spaces on its own):

- normalizer: the model's precompiled charsmap (`Precompiled`), preceded by NFC where that measurably agrees
  more often with SentencePiece (`nfc_helps`: tokenizers applies the charsmap one rule per grapheme
  cluster, so decomposed letters with two marks need composing first), then `remove_extra_whitespaces` as
  SentencePiece does it after the charsmap (drop leading/trailing U+0020, collapse runs of U+0020; tabs and
  other spaces stay unless the charsmap maps them), then `add_dummy_prefix` (`Prepend`, which leaves an
  empty string empty, as SentencePiece does) and `escape_whitespaces` (" " -> "▁");
- no pre-tokenizer: the model sees the whole normalized text, as SentencePiece's lattice / merge loop does;
- model: Unigram with the model's float32 scores, or BPE with merges in SentencePiece's score order;
  unknown runs fuse into one `<unk>`, `byte_fallback` as in the model;
- special tokens `[CLS]`, `[SEP]`, `[PAD]`, `[MASK]` (lstrip, as in RemBERT) and `<unk>` with the model's
  own ids (never appended), plus any other control pieces; RemBERT's post-processor
  `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` with type ids 0/1;
- decoder: `<unk>` -> the model's unk surface, "▁" -> " ", byte fallback, drop the text's first space.

Parity is measured, not assumed: `measure_agreement` compares ids with SentencePiece's on the project's
probe corpus and sorts every difference into a class. The classes that no `tokenizer.json` can remove
are documented with their cause and a reproducer in `DIFFERENCE_CLASSES` below.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

from converters.output import check_output, inputs_of, staged_output
from rembert_ref.errors import UserError
from rembert_ref.tokenization import (
    CLS,
    MASK,
    NORMAL,
    PAD,
    SEP,
    SPACE_SYMBOL,
    USER_DEFINED,
    SpmInfo,
    added_piece_ids,
    json_member,
    read_sentencepiece,
    split_on_specials,
)

FLT_MIN = np.float32(1.17549435e-38)


# Where the fast tokenizer and SentencePiece may differ, why no tokenizer.json can remove it, and a
# reproducer (each is asserted in tests/test_tokenizer.py). Anything else is a bug: the tests fail on it.
DIFFERENCE_CLASSES = {
    "precompiled-grapheme":
        "SentencePiece applies the charsmap by the LONGEST rule at each position. tokenizers' Precompiled "
        "works per grapheme cluster: under 6 bytes it applies the SHORTEST rule that is a prefix of the "
        "cluster and replaces the WHOLE cluster by that rule's output (the rest is lost: 'drop'), so a "
        "cluster that is itself a rule loses to a shorter prefix rule ('nested'); from 6 bytes on it maps "
        "char by char and no sequence rule applies. Measured on the probe corpus + 2,000 random lines "
        "(benchmarks/tokenizer_normalizers.py): 175 drop, 49 nested, 3 long clusters. No tokenizer.json "
        "can remove it: keys cannot stop being prefixes of each other; matching SentencePiece would need a "
        "rule for every cluster under 6 bytes that starts with a rule (millions: each letter with a rule "
        "times the combining marks after it); Replace normalizers have no backreferences (one per distinct "
        "output, 12k for nmt_nfkc); and breaking clusters apart also stops the sequence rules, which only "
        "apply inside one cluster. NFC first (nfc_helps) composes what it can, which removes these cases for "
        "letters with precomposed forms; what remains are clusters NFC cannot compose and marks out of "
        "canonical order. Reproducers (nmt_nfkc): Precompiled alone: 'u\\u0308\\u0301' -> SentencePiece "
        "'▁ǘ', tokenizers '▁ü'; with NFC first: '\\uff21\\u0301' (full-width A, acute) -> SentencePiece "
        "'▁Á', tokenizers '▁A'.",
    "nfc-composition":
        "where NFC runs before the charsmap (see nfc_helps: chosen when it agrees more often on the probe "
        "corpus and its NFD form, as for nmt_nfkc), it reorders combining marks into canonical order and "
        "composes a precomposed letter with a following mark, where SentencePiece keeps the text as written "
        "and the charsmap alone would have matched. Text in canonical order (NFC or NFD, what tools write) "
        "is not affected. Reproducer (nmt_nfkc): '\u00f4\u0323' (ô, then a dot below) -> SentencePiece "
        "'▁ô\u0323', tokenizers '▁ộ'.",
    "unigram-float32-tie":
        "two segmentations whose scores are equal or differ by less than float32 rounding: SentencePiece "
        "sums path scores in float32, tokenizers in float64 (exactly), so each breaks the tie its own way. "
        "Reproducer: pieces '▁' -4.6444073, '.' -5.6014724, '..' 2x that: '...' -> SentencePiece "
        "'▁ .. .', tokenizers '▁ . ..'.",
    "user-defined-charsmap":
        "a user-defined piece that the charsmap (or NFC) would change, like '™', '…', full-width 'ＡＢＣ' or "
        "a decomposed 'e\u0301' under nmt_nfkc. SentencePiece's normalizer tries the user-defined pieces first "
        "at each position of the RAW text and copies a match unnormalized; tokenizers normalizes the whole "
        "text before any model sees it, so the piece is gone by then. Matching it as an added token in the raw "
        "text instead would drop the '▁' before every such piece (as bpe-user-defined does), which costs more "
        "than it saves. Reproducer (unigram, nmt_nfkc, user-defined '™'): '™' -> SentencePiece '▁ ™', "
        "tokenizers '▁TM'. Pieces the normalizer leaves as they are (RemBERT's [CLS], [SEP], [MASK]) are exact.",
    "deleted-text-prefix":
        "with remove_extra_whitespaces=false, a text (or the part between special tokens) that the charsmap "
        "deletes entirely, like the control character '\x07' under nmt_nfkc: SentencePiece adds the dummy "
        "prefix before normalizing and keeps it ('▁'), tokenizers' Prepend adds nothing to an empty string. "
        "Reproducer: '\x07' -> SentencePiece '▁', tokenizers no tokens.",
    "bpe-user-defined":
        "a user-defined piece in a BPE model that does not begin with '▁' (like '<url>' or '<|tag|>'). "
        "tokenizers' BPE cannot produce a multi-character symbol that is no merge, so the piece is an added "
        "token. SentencePiece matches it in the normalized text; an added token matched there "
        "(normalized=True) has its own content normalized too, dummy prefix included ('<url>' -> '▁<url>'), "
        "so it would swallow the '▁' before it and miss the piece after any other character. So it is "
        "matched in the raw text, and the text on each side is encoded as a sentence of its own: the piece "
        "stays whole, but the '▁' before it is dropped and the text after it gets a dummy prefix. Reproducer: "
        "'see <url> now' -> SentencePiece '▁see ▁ <url> ▁now', tokenizers '▁see <url> ▁now'. A piece that "
        "begins with '▁' (like '▁\"', the space before a quote) is left as it is by the normalizer and is "
        "matched in the normalized text, exactly as SentencePiece does. Measured on the probe corpus with a "
        "BPE model holding '<url>', '▁\"', '<|tag|>', '@@' (benchmarks/tokenizer_bpe_user_defined.py): "
        "before (every piece raw-matched) 411/441 probe lines, 0/441 with ' \"' inserted; now 424/441 and "
        "424/441 (the rest precompiled-grapheme); lines with ' <url> ' or ' <|tag|> ' inserted: 0/441 "
        "before and after. For the same reason a piece that only the normalizer spells out (full-width "
        "'ｈｅｌｌｏ' for a piece 'hello') is matched by SentencePiece and not here. (In a unigram model "
        "user-defined pieces are exact unless the charsmap changes them: user-defined-charsmap.)",
}
# One line each, for the model card.
DIFFERENCE_SUMMARIES = {
    "precompiled-grapheme": "tokenizers applies the normalization charsmap per grapheme cluster where "
                            "SentencePiece takes the longest rule (rare letter + combining mark sequences).",
    "nfc-composition": "NFC before the charsmap composes combining marks written out of canonical order.",
    "unigram-float32-tie": "two segmentations with equal scores up to float32 rounding; each breaks the tie "
                           "its own way.",
    "bpe-user-defined": "a BPE user-defined piece that does not begin with ▁ (like <url>) is matched before "
                        "normalization: it stays whole, the ▁ before it is dropped.",
    "user-defined-charsmap": "a user-defined piece the normalizer would change (like ™ under nmt_nfkc) is kept "
                             "as written by SentencePiece, normalized here.",
    "deleted-text-prefix": "text the charsmap deletes entirely (a control character) keeps SentencePiece's "
                           "dummy-prefix ▁ when extra whitespace is kept; here it gives no token.",
}
# Not a class of encode() differences, but limits worth knowing:
# - split_special_tokens / encode_special_tokens=True: control pieces stay in the Unigram vocabulary with a
#   score no path loses to, but tokenizers scores unknown characters from the lowest score, so a control
#   string holding a character the model does not know ("[" in a model that never saw it) can come out as
#   the control id, where SentencePiece gives <unk> pieces. The default (special tokens matched) is exact.
# - decode of an id list that STARTS with <unk> gives "⁇ ..." where SentencePiece gives " ⁇ ..."; ids that
#   SentencePiece's encode makes never start with <unk> (the dummy prefix comes first).
# - decode of text that began with a literal "▁" (only an identity-normalized model keeps it): SentencePiece
#   drops one leading "▁" per piece while its output is still empty, tokenizers drops one space in all, so
#   "▁▁a" encoded as ['▁', '▁', 'a'] decodes to "a" in SentencePiece and " a" here.

DEFAULT_MODEL_MAX_LENGTH = 512  # RemBERT's max_position_embeddings, for the standalone tokenizer command
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.model")


@dataclasses.dataclass
class Agreement:
    """Ids compared line by line with a reference; `classes` counts the explained differences."""

    total: int = 0
    equal: int = 0
    classes: dict[str, int] = dataclasses.field(default_factory=dict)
    unexplained: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.equal / self.total if self.total else 1.0


@dataclasses.dataclass
class TokenizerReport:
    output_dir: Path
    model_type: str
    vocab_size: int
    special_ids: dict[str, int]
    byte_fallback: bool
    normalization: str
    agreement: Agreement
    files: dict[str, str]  # file name -> sha256

    def summary(self) -> str:
        a = self.agreement
        lines = [
            f"wrote {self.output_dir} ({self.model_type}, {self.vocab_size} pieces, "
            f"normalization {self.normalization or 'none'}, byte_fallback {self.byte_fallback})",
            "special tokens: " + ", ".join(f"{k}={v}" for k, v in self.special_ids.items()),
            f"ids equal to SentencePiece on {a.equal}/{a.total} probe lines ({100 * a.rate:.2f}%)",
        ]
        lines += [f"  {n} lines differ by documented class {name} (converters/tokenizer.py: DIFFERENCE_CLASSES)"
                  for name, n in sorted(a.classes.items())]
        lines += [f"  UNEXPLAINED difference: {text!r}" for text in a.unexplained]
        lines += [f"  {name}  sha256 {digest}" for name, digest in self.files.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- reading


@functools.cache
def _probe_corpus_lines() -> tuple[str, ...]:
    document = json.loads((Path(__file__).with_name("probe_corpus.json")).read_text(encoding="utf-8"))
    return tuple(document["lines"])


def probe_corpus() -> list[str]:
    """The multilingual probe corpus (shipped as data, generated by `python -m testkit.spm_models corpus`):
    edge lines first, then seeded random lines of many scripts and separators."""
    return list(_probe_corpus_lines())


def build_normalizer(info: SpmInfo, compose_first: bool | None = None) -> normalizers.Normalizer:
    """The charsmap (`Precompiled`), preceded by NFC where that agrees more often with SentencePiece
    (`compose_first=None` measures it, see `nfc_helps`), then the whitespace steps."""
    spec = info.proto.normalizer_spec
    if not spec.precompiled_charsmap:
        return normalizers.Sequence(whitespace_steps(spec))
    if compose_first is None:
        compose_first = nfc_helps(info)
    try:
        charsmap = [normalizers.Precompiled(spec.precompiled_charsmap)]
    except Exception as exc:  # tokenizers raises a bare Exception for a charsmap it cannot parse
        raise UserError(f"the SentencePiece model's precompiled_charsmap is corrupt ({str(exc)[:120]}); pass the "
                        ".model file that was trained with the checkpoint") from None
    return normalizers.Sequence([normalizers.NFC()] * compose_first + charsmap + whitespace_steps(spec))


def nfc_helps(info: SpmInfo) -> bool:
    """Whether NFC before `Precompiled` normalizes more probe lines exactly as SentencePiece does.

    tokenizers' `Precompiled` applies one rule per grapheme cluster (class precompiled-grapheme), so a
    decomposed letter with two marks ('o\u0323\u0302', as NFD text writes 'ộ') loses its second mark.
    Composing first hands it precomposed letters, which an NFKC-style charsmap maps one by one exactly like
    SentencePiece: for nmt_nfkc this takes NFD text from 373 to 440 of 441 probe lines. Whether it helps is
    measured here, on the probe corpus and its NFD form, not assumed: a custom charsmap may not be NFKC."""
    sp = info.processor
    plain, composed = (build_normalizer(info, compose_first=flag) for flag in (False, True))
    lines = probe_corpus()
    lines += [unicodedata.normalize("NFD", line) for line in lines]
    score = {True: 0, False: 0}
    for line in lines:
        reference = sp.normalize(line)
        score[False] += plain.normalize_str(line) == reference
        score[True] += composed.normalize_str(line) == reference
    return score[True] > score[False]


def whitespace_steps(spec: Any) -> list[normalizers.Normalizer]:
    """What SentencePiece does after the charsmap: remove_extra_whitespaces, add_dummy_prefix, escaping."""
    steps: list[normalizers.Normalizer] = []
    if spec.remove_extra_whitespaces:
        # SentencePiece treats only U+0020 (after the charsmap) as whitespace here.
        steps.append(normalizers.Replace(Regex(r"\A +| +\z"), ""))
        steps.append(normalizers.Replace(Regex(r" {2,}"), " "))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE_SYMBOL))
        if spec.remove_extra_whitespaces:
            # SentencePiece drops trailing "▁" after escaping, so a literal "▁" at the end goes too.
            steps.append(normalizers.Replace(Regex(SPACE_SYMBOL + r"+\z"), ""))
    return steps


def unigram_scores(info: SpmInfo) -> list[float]:
    """The scores SentencePiece's Unigram encoder really uses, one per id.

    User-defined pieces get SentencePiece's bonus `byte_length * max_score - 0.1` (in float32, with
    max_score over normal pieces floored at FLT_MIN) so they win as in SentencePiece. Pieces SentencePiece
    never matches in text (control, unknown, byte, unused) get a score no text path can lose to.
    """
    # As arrays: 250,300 numpy scalars one by one took 0.18 s.
    count = len(info.pieces)
    kinds = np.fromiter((kind for _, _, kind in info.pieces), dtype=np.int64, count=count)
    stored = np.fromiter((score for _, score, _ in info.pieces), dtype=np.float64, count=count).astype(np.float32)
    normal = stored[kinds == NORMAL]
    max_score = max(FLT_MIN, normal.max()) if normal.size else FLT_MIN
    min_score = normal.min() if normal.size else np.float32(0.0)
    # Any SentencePiece path over k characters scores at least k * (min_score - 10) (single pieces or
    # unknown nodes), so this is below every path over fewer than 1000 characters.
    never = float(1000 * (min_score - 10.0))
    scores = np.where(kinds == NORMAL, stored.astype(np.float64), never)
    for i in np.flatnonzero(kinds == USER_DEFINED):
        scores[i] = float(np.float32(len(info.pieces[i][0].encode("utf-8"))) * max_score - np.float32(0.1))
    return scores.tolist()


def bpe_merges(info: SpmInfo) -> list[tuple[str, str]]:
    """Merges in SentencePiece's order: by the merged piece's score, best first, then by id."""
    vocab = {piece: i for i, (piece, _, kind) in enumerate(info.pieces) if kind in (NORMAL, USER_DEFINED)}
    merges = []
    for piece, score, kind in info.pieces:
        if kind != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[piece], vocab[left], vocab[right], left, right))
    merges.sort()
    return [(m[4], m[5]) for m in merges]


def build_model(info: SpmInfo) -> models.Model:
    byte_fallback = bool(info.proto.trainer_spec.byte_fallback)
    if info.model_type == "unigram":
        vocab = [(piece, score) for (piece, _, _), score in zip(info.pieces, unigram_scores(info), strict=True)]
        return models.Unigram(vocab, unk_id=info.unk_id, byte_fallback=byte_fallback)
    vocab = {piece: i for i, (piece, _, _) in enumerate(info.pieces)}
    return models.BPE(vocab, bpe_merges(info), unk_token=info.pieces[info.unk_id][0], fuse_unk=True,
                      byte_fallback=byte_fallback)


def build_decoder(info: SpmInfo) -> decoders.Decoder:
    unk_surface = info.proto.trainer_spec.unk_surface or " \u2047 "
    unk = re.escape(info.pieces[info.unk_id][0])
    steps = [
        # Only the <unk> token itself, not text that happens to spell "<unk>" across pieces.
        decoders.Replace(Regex(rf"\A{unk}\z"), unk_surface),
        decoders.Replace(SPACE_SYMBOL, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if info.proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))  # after Fuse: only the text's first space
    return decoders.Sequence(steps)


def special_tokens(info: SpmInfo, normalizer: normalizers.Normalizer | None = None) -> list[AddedToken]:
    """Added tokens, in id order: every control piece, <unk>, the RemBERT specials present, and (BPE only)
    the user-defined pieces.

    Special tokens are matched in the raw text (normalized=False), the text between them encoded as
    sentences of their own, as transformers does. A BPE user-defined piece is matched where SentencePiece
    matches it, in the normalized text (normalized=True), when the normalizer leaves the piece itself as it is:
    a piece that begins with "▁" (like '▁"'), whose "▁" is the space before it. Any other piece would be
    normalized with the dummy prefix too ('<url>' -> '▁<url>') and swallow the "▁" before it, so it stays
    matched in the raw text (class bpe-user-defined). `normalizer`: the tokenizer's (default: built here)."""
    if normalizer is None and info.model_type == "bpe" and info.user_defined_ids:
        normalizer = build_normalizer(info)
    tokens = []
    for i, special in added_piece_ids(info):
        piece = info.pieces[i][0]
        in_normalized_text = not special and normalizer is not None and normalizer.normalize_str(piece) == piece
        tokens.append(AddedToken(piece, lstrip=piece == MASK, rstrip=False, single_word=False,
                                 normalized=in_normalized_text, special=special))
    return tokens


def build_tokenizer(info: SpmInfo) -> Tokenizer:
    tokenizer = Tokenizer(build_model(info))
    tokenizer.normalizer = build_normalizer(info)
    tokenizer.decoder = build_decoder(info)
    cls_id, sep_id = info.special_ids[CLS], info.special_ids[SEP]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    tokens = special_tokens(info, tokenizer.normalizer)
    tokenizer.add_special_tokens([t for t in tokens if t.special])
    tokenizer.add_tokens([t for t in tokens if not t.special])
    for token in tokens:  # the ids come from the model: a mismatch here is a bug, never a new id
        assert tokenizer.token_to_id(token.content) == info.pieces.index(
            next(p for p in info.pieces if p[0] == token.content)), token.content
    return tokenizer


# ---------------------------------------------------------------------------------------- the HF files


def special_tokens_map(info: SpmInfo) -> dict[str, Any]:
    unk = info.pieces[info.unk_id][0]
    mapping: dict[str, Any] = {"bos_token": CLS, "eos_token": SEP, "unk_token": unk, "sep_token": SEP,
                               "cls_token": CLS}
    if PAD in info.special_ids:
        mapping["pad_token"] = PAD
    if MASK in info.special_ids:
        mapping["mask_token"] = {"content": MASK, "lstrip": True, "rstrip": False, "normalized": False,
                                 "single_word": False}
    return mapping


def tokenizer_config(info: SpmInfo, tokenizer: Tokenizer, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
                     ) -> dict[str, Any]:
    added = json_member(tokenizer.to_str(), "added_tokens")  # not the whole vocabulary
    unk = info.pieces[info.unk_id][0]
    config: dict[str, Any] = {
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word",
                                             "special")}
            for t in added
        },
        "bos_token": CLS,
        "clean_up_tokenization_spaces": False,
        "cls_token": CLS,
        # The slow tokenizer must see the text as SentencePiece does: no lowercasing, accents kept, no
        # whitespace rewriting of its own.
        "do_lower_case": False,
        "eos_token": SEP,
        "keep_accents": True,
        "mask_token": MASK if MASK in info.special_ids else None,
        # The model's max_position_embeddings: truncation=True must never make a sequence the model cannot take.
        "model_max_length": model_max_length,
        # transformers 5.x's generic fast class returns only input_ids and attention_mask unless told: RemBERT
        # reads token types (a pair is [CLS] A [SEP] B [SEP] with types 0/1, as BLEURT scores it).
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "pad_token": PAD if PAD in info.special_ids else None,
        "remove_space": False,
        "sep_token": SEP,
        # The generic fast class loads tokenizer.json exactly as written, in transformers 4.57 and 5.x alike.
        # "RemBertTokenizer" would make 5.x rebuild its own pipeline from the pieces (unk id 2, quotes
        # rewritten, spaces collapsed: 294 of 306 example lines differ from SentencePiece). The slow-tokenizer
        # keys above still serve RemBertTokenizer.from_pretrained in 4.57, which reads sentencepiece.model.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": unk,
    }
    return config


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def tokenizer_files(info: SpmInfo, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> dict[str, bytes]:
    """The four output files as bytes; the same model gives the same bytes. `model_max_length` is the
    model's max_position_embeddings."""
    tokenizer = build_tokenizer(info)
    return {
        "tokenizer.json": (tokenizer.to_str(pretty=True) + "\n").encode("utf-8"),
        "tokenizer_config.json": _json_bytes(tokenizer_config(info, tokenizer, model_max_length)),
        "special_tokens_map.json": _json_bytes(special_tokens_map(info)),
        "sentencepiece.model": info.serialized,
    }


# ------------------------------------------------------------------------------------- measuring parity


def _special_strings(info: SpmInfo) -> list[str]:
    return [info.pieces[i][0] for i, special in added_piece_ids(info) if special]


def reference_ids(sp: spm.SentencePieceProcessor, text: str, specials: Sequence[str]) -> list[int]:
    """SentencePiece's ids with special-token strings taken as special tokens (Hugging Face semantics)."""
    ids: list[int] = []
    for i, part in enumerate(split_on_specials(text, specials)):
        ids += [sp.piece_to_id(part)] if i % 2 else sp.encode(part)
    return ids


def _classify(info: SpmInfo, tokenizer: Tokenizer, sp: spm.SentencePieceProcessor, text: str,
              specials: Sequence[str], charsmap_alone: normalizers.Normalizer) -> str | None:
    """Name the documented class that explains a difference, or None if none does.

    Segment by segment (the text between special tokens, which both encode on their own): every segment whose
    ids differ must be explained. A class that stands for a trigger (a user-defined piece, text the charsmap
    deletes) explains a segment only if the segment agrees, or an older class explains it, once the trigger is
    taken out: a trigger elsewhere in the line excuses nothing else."""
    segments = [p for i, p in enumerate(split_on_specials(text, specials)) if i % 2 == 0]
    names = []
    for segment in segments:
        if _agrees(tokenizer, sp, segment):
            continue
        name = _classify_segment(info, tokenizer, sp, segment, charsmap_alone)
        if name is None:
            return None
        names.append(name)
    return names[0] if names else None  # segments that agree alone: the difference is in how they are joined


def _agrees(tokenizer: Tokenizer, sp: spm.SentencePieceProcessor, text: str) -> bool:
    return tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text)


def _classify_segment(info: SpmInfo, tokenizer: Tokenizer, sp: spm.SentencePieceProcessor, segment: str,
                      charsmap_alone: normalizers.Normalizer) -> str | None:
    normalize = tokenizer.normalizer.normalize_str
    if normalize(segment) == "" and set(sp.normalize(segment)) == {SPACE_SYMBOL}:
        return "deleted-text-prefix"  # the whole segment is deleted: nothing else is in it
    user_defined = [info.pieces[i][0] for i in info.user_defined_ids]
    changed = [u for u in user_defined if u in segment and normalize(u).lstrip(SPACE_SYMBOL) != u]
    if changed:
        return "user-defined-charsmap" if _explained_without(
            changed, segment, info, tokenizer, sp, charsmap_alone) else None
    if info.model_type == "bpe" and info.user_defined_ids:
        # Only pieces matched in the raw text; those matched in the normalized text are exact. SentencePiece
        # matches in the normalized text, where the normalizer may spell a piece out ('ｈｅｌｌｏ' -> 'hello').
        raw_matched = {t.content for t in tokenizer.get_added_tokens_decoder().values()
                       if not t.special and not t.normalized}
        spelled = sp.normalize(segment).replace(SPACE_SYMBOL, " ")
        present = [u for u in raw_matched if u in segment or u in spelled]
        if present:
            return "bpe-user-defined" if _explained_without(
                present, spelled, info, tokenizer, sp, charsmap_alone) else None
    return _older_class(info, tokenizer, sp, segment, charsmap_alone)


def _explained_without(triggers: Sequence[str], segment: str, info: SpmInfo, tokenizer: Tokenizer,
                       sp: spm.SentencePieceProcessor, charsmap_alone: normalizers.Normalizer) -> bool:
    rest = segment
    for trigger in triggers:
        rest = rest.replace(trigger, " ")
    return _agrees(tokenizer, sp, rest) or _older_class(info, tokenizer, sp, rest, charsmap_alone) is not None


def _older_class(info: SpmInfo, tokenizer: Tokenizer, sp: spm.SentencePieceProcessor, segment: str,
                 charsmap_alone: normalizers.Normalizer) -> str | None:
    """precompiled-grapheme, nfc-composition or unigram-float32-tie for one segment, or None."""
    if tokenizer.normalizer.normalize_str(segment) != sp.normalize(segment):
        # NFC caused it if there is an NFC step, it changes this text, and the charsmap alone would have matched.
        if _composes_first(tokenizer) and unicodedata.normalize("NFC", segment) != segment and \
                charsmap_alone.normalize_str(segment) == sp.normalize(segment):
            return "nfc-composition"
        # Precompiled's per-cluster rule differs from SentencePiece's only inside a cluster of more than one
        # character: any other normalization difference is not this class, but a difference to report.
        grapheme_effect = bool(info.proto.normalizer_spec.precompiled_charsmap) and any(map(joins_a_cluster, segment))
        return "precompiled-grapheme" if grapheme_effect else None
    got, want = tokenizer.encode(segment, add_special_tokens=False).ids, sp.encode(segment)
    if "".join(info.pieces[i][0] for i in got) != "".join(info.pieces[i][0] for i in want):
        return None  # different text covered: never a tie
    if info.model_type == "unigram":
        scores = unigram_scores(info)
        a, b = sum(scores[i] for i in got), sum(scores[i] for i in want)
        bound = (len(got) + len(want)) * 2.0 ** -23 * max(abs(a), abs(b))
        return "unigram-float32-tie" if abs(a - b) <= bound else None
    return None  # BPE merges are exact: competing merges that make one piece are one merge


# Characters that share a grapheme cluster with a neighbour (Unicode UAX #29) beyond the marks (categories Mn, Mc,
# Me): joiners, prepended marks, emoji modifiers and tags, regional indicators, Hangul jamo, half-width kana voicing,
# Thai and Lao AM, CR (of CR LF).
_CLUSTER_JOINERS = ((0x000D, 0x000D), (0x0600, 0x0605), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891),
                    (0x08E2, 0x08E2), (0x0D4E, 0x0D4E), (0x0E33, 0x0E33), (0x0EB3, 0x0EB3), (0x1100, 0x11FF),
                    (0x200C, 0x200D), (0xA960, 0xA97F), (0xD7B0, 0xD7FF), (0xFF9E, 0xFF9F), (0x110BD, 0x110BD),
                    (0x110CD, 0x110CD), (0x111C2, 0x111C3), (0x1193F, 0x1193F), (0x11941, 0x11941),
                    (0x11A3A, 0x11A3A), (0x11A84, 0x11A89), (0x11D46, 0x11D46), (0x11F02, 0x11F02),
                    (0x1F1E6, 0x1F1FF), (0x1F3FB, 0x1F3FF), (0xE0020, 0xE007F))


def joins_a_cluster(char: str) -> bool:
    """Whether `char` can join a neighbour in one grapheme cluster; text without any has one character per
    cluster (a superset of UAX #29's rules: it may say yes where no cluster forms, never no where one does)."""
    code = ord(char)
    return unicodedata.category(char) in ("Mn", "Mc", "Me") or any(lo <= code <= hi for lo, hi in _CLUSTER_JOINERS)


def measure_agreement(info: SpmInfo, tokenizer: Tokenizer, lines: Iterable[str]) -> Agreement:
    """Fast ids vs SentencePiece's (special-token strings as specials) for each line, explained."""
    sp = info.processor
    specials = _special_strings(info)
    charsmap_alone = build_normalizer(info, compose_first=False)
    agreement = Agreement()
    for text in lines:
        agreement.total += 1
        got = tokenizer.encode(text, add_special_tokens=False).ids
        want = reference_ids(sp, text, specials)
        if got == want:
            agreement.equal += 1
            continue
        name = _classify(info, tokenizer, sp, text, specials, charsmap_alone)
        if name is None:
            agreement.unexplained.append(text)
        else:
            agreement.classes[name] = agreement.classes.get(name, 0) + 1
    return agreement


# ------------------------------------------------------------------------------------------- the verb


def convert_tokenizer(spm_path: str | Path, output_dir: str | Path, *, force: bool = False,
                      probe_lines: int | None = None,
                      model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> TokenizerReport:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and sentencepiece.model.

    The files are written to a temporary directory beside `output_dir` and renamed into place only when
    complete. An existing non-empty `output_dir` is refused unless `force`. The report carries the
    measured agreement with SentencePiece on the project's probe corpus.
    """
    inputs = inputs_of([(spm_path, "SentencePiece model")])
    check_output(output_dir, inputs, force=force)
    output_dir = Path(output_dir)
    info = read_sentencepiece(spm_path)
    files = tokenizer_files(info, model_max_length)
    tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
    agreement = measure_agreement(info, tokenizer, probe_corpus()[:probe_lines])
    with staged_output(output_dir, inputs, force=force) as staging:
        write_files(staging, files)
    spec = info.proto.normalizer_spec
    return TokenizerReport(
        output_dir=output_dir,
        model_type=info.model_type,
        vocab_size=len(info.pieces),
        special_ids={**info.special_ids, info.pieces[info.unk_id][0]: info.unk_id},
        byte_fallback=bool(info.proto.trainer_spec.byte_fallback),
        normalization=(spec.name + (" (NFC first: measured to agree more often)" if _composes_first(tokenizer) else "")
                       if spec.precompiled_charsmap else ""),
        agreement=agreement,
        files={name: hashlib.sha256(files[name]).hexdigest() for name in FILES},
    )


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    for name in FILES:
        (directory / name).write_bytes(files[name])


def _composes_first(tokenizer: Tokenizer) -> bool:
    steps = tokenizer.normalizer  # build_normalizer always makes a Sequence
    return len(steps) > 0 and isinstance(steps[0], normalizers.NFC)
