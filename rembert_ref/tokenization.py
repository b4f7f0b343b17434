"""RemBERT tokenizers with the API RemBERT users know: `RemBertTokenizer` (on sentencepiece) and
`RemBertTokenizerFast` (on tokenizers, reading the `tokenizer.json` that `converters.tokenizer` writes).

Both follow Hugging Face semantics: special-token strings in text are special tokens ([MASK] takes the
whitespace before it), the text between them is encoded exactly as SentencePiece encodes it, and
`[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` are added with type ids 0/1. Only the text -> ids step differs
between the two classes; truncation, padding and tensors are shared code, so the two agree by
construction wherever their ids agree (measured in the tests).

    tok = RemBertTokenizerFast.from_pretrained("out/tokenizer")
    batch = tok(["a text", "another"], padding=True, return_tensors="np")
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from rembert_ref.errors import UserError

# SentencePiece's ModelProto.SentencePiece.Type and TrainerSpec.ModelType values.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
CLS, SEP, PAD, MASK = "[CLS]", "[SEP]", "[PAD]", "[MASK]"
REQUIRED_SPECIALS = (CLS, SEP)
SPACE_SYMBOL = "▁"
SPM_FILE = "sentencepiece.model"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"


@dataclasses.dataclass(frozen=True)
class SpmInfo:
    """What the converter reads from a `.model` file."""

    proto: Any  # sentencepiece_model_pb2.ModelProto
    serialized: bytes
    model_type: str
    pieces: list[tuple[str, float, int]]  # (piece, score, type) in id order
    unk_id: int
    special_ids: dict[str, int]  # "[CLS]" -> id, for the RemBERT specials present
    control_ids: list[int]  # every control piece, specials included
    user_defined_ids: list[int]
    # SentencePiece's own processor of the model, loaded once: the check below, and the encoder every parity
    # measurement compares with (loading 250,300 pieces costs 0.13 s each time).
    processor: Any = dataclasses.field(default=None, compare=False, repr=False)


def read_sentencepiece(path: str | Path) -> SpmInfo:
    """Parse and check a SentencePiece model; any problem is a one-line UserError."""
    from sentencepiece import sentencepiece_model_pb2

    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"SentencePiece model {path} {problem}; pass the path of a .model file")
    data = path.read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
        # The C++ loader checks what protobuf parsing alone accepts (a text file can parse as a proto).
        processor = spm.SentencePieceProcessor(model_proto=data)
    except Exception as exc:  # protobuf DecodeError or sentencepiece RuntimeError
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a valid SentencePiece model ({reason}); pass the .model file "
                        "that was trained with the checkpoint") from None
    if not proto.pieces:
        raise UserError(f"{path} is not a valid SentencePiece model (no pieces); pass the .model file "
                        "that was trained with the checkpoint")
    model_type = MODEL_TYPES.get(proto.trainer_spec.model_type, "unknown")
    if model_type not in ("unigram", "bpe"):
        raise UserError(f"{path} is a SentencePiece '{model_type}' model; only unigram and BPE models "
                        "can be converted")
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise UserError(f"{path} uses treat_whitespace_as_suffix, which tokenizers cannot express; "
                        "retrain without it")
    if proto.HasField("denormalizer_spec") and proto.denormalizer_spec.precompiled_charsmap:
        raise UserError(f"{path} has denormalization rules (applied when decoding), which a tokenizer.json "
                        "decoder cannot express; retrain without denormalization_rule_tsv")
    pieces = [(p.piece, float(p.score), int(p.type)) for p in proto.pieces]
    broken = next((i for i, (piece, _, _) in enumerate(pieces) if not isinstance(piece, str)), None)
    if broken is not None:  # protobuf hands a string field that is not UTF-8 back as bytes
        raise UserError(f"{path} is not a valid SentencePiece model (piece {broken} is not UTF-8 text); pass the "
                        ".model file the checkpoint was trained with")
    ids = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    unk_ids = [i for i, (_, _, t) in enumerate(pieces) if t == UNKNOWN]
    missing = [s for s in REQUIRED_SPECIALS if s not in ids]
    if missing:
        raise UserError(f"{path} has no {' or '.join(missing)} piece, which RemBERT needs; pass the model "
                        "trained with the RemBERT checkpoint")
    specials = {s: ids[s] for s in (CLS, SEP, PAD, MASK) if s in ids}
    return SpmInfo(
        proto=proto,
        serialized=data,
        model_type=model_type,
        pieces=pieces,
        unk_id=unk_ids[0],
        special_ids=specials,
        control_ids=[i for i, (_, _, t) in enumerate(pieces) if t == CONTROL],
        user_defined_ids=[i for i, (_, _, t) in enumerate(pieces) if t == USER_DEFINED],
        processor=processor,
    )


# ---------------------------------------------------------------------------------------------- building


def added_piece_ids(info: SpmInfo) -> list[tuple[int, bool]]:
    """(id, is_special) of the pieces matched before SentencePiece runs, in id order: every control piece,
    <unk>, the RemBERT specials present, and in a BPE model the user-defined pieces (BPE can keep a
    user-defined piece whole only this way). User-defined pieces are not special (they stay in decode)."""
    ids = sorted(set(info.control_ids) | {info.unk_id} | set(info.special_ids.values()))
    if info.model_type == "bpe":
        ids = sorted(set(ids) | set(info.user_defined_ids))
    return [(i, info.pieces[i][2] != USER_DEFINED or info.pieces[i][0] in info.special_ids) for i in ids]


def split_on_specials(text: str, specials: Sequence[str], lstrip: Iterable[str] = (MASK,)) -> list[str]:
    """Split text on special-token strings (leftmost, longest first), as the added-token matcher does.

    Returns alternating [text, special, text, ...]; a special that takes the space before it (lstrip)
    removes the whitespace from the text on its left.
    """
    lstrip = set(lstrip)
    ordered = sorted(specials, key=len, reverse=True)
    parts: list[str] = []
    start = pos = 0
    while pos < len(text):
        match = next((s for s in ordered if text.startswith(s, pos)), None)
        if match is None:
            pos += 1
            continue
        left = text[start:pos]
        if match in lstrip:
            left = left.rstrip(_WHITESPACE)
        parts += [left, match]
        pos = start = pos + len(match)
    parts.append(text[start:])
    return parts


# Rust's char::is_whitespace (Unicode White_Space), which tokenizers' lstrip uses; Python's str.isspace
# differs (it includes U+001C..U+001F and excludes nothing else we meet).
_WHITESPACE = "".join(chr(c) for c in (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                                       0x2028, 0x2029, 0x202F, 0x205F, 0x3000))


class BatchEncoding(dict):
    """A dict of model inputs that also allows attribute access (`enc.input_ids`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _RemBertTokenizerBase:
    """Everything but text -> ids and decoding; subclasses provide `_encode_texts` and `_decode`."""

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(self, *, special_ids: dict[str, int], unk_token: str, special_tokens: Sequence[str],
                 model_max_length: int = 512) -> None:
        self.cls_token, self.sep_token = CLS, SEP
        self.pad_token = PAD if PAD in special_ids else None
        self.mask_token = MASK if MASK in special_ids else None
        self.unk_token = unk_token
        self.cls_token_id, self.sep_token_id = special_ids[CLS], special_ids[SEP]
        self.pad_token_id = special_ids.get(PAD)
        self.mask_token_id = special_ids.get(MASK)
        self.model_max_length = model_max_length
        # Every token that is never split and that skip_special_tokens drops.
        self.all_special_tokens = list(special_tokens)
        self.all_special_ids = [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]
        self.unk_token_id = self.convert_tokens_to_ids(unk_token)

    # -- provided by subclasses ----------------------------------------------------------------------------
    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        raise NotImplementedError

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    # -- special tokens ----------------------------------------------------------------------------------
    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`."""
        cls, sep = [self.cls_token_id], [self.sep_token_id]
        if token_ids_1 is None:
            return cls + token_ids_0 + sep
        return cls + token_ids_0 + sep + token_ids_1 + sep

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 for a special token, 0 for a sequence token."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise UserError("token_ids_1 must be None when the ids already have special tokens; pass "
                                "the one combined sequence")
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1] + [0] * len(token_ids_1) + [1]

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int],
                                             token_ids_1: list[int] | None = None) -> list[int]:
        """0 for `[CLS] A [SEP]`, 1 for `B [SEP]`."""
        first = [0] * (len(token_ids_0) + 2)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    # -- encoding ----------------------------------------------------------------------------------------
    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               truncation: bool | str = False, max_length: int | None = None) -> list[int]:
        return self(text, text_pair, add_special_tokens=add_special_tokens, truncation=truncation,
                    max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        return_token_type_ids: bool = True,
        return_special_tokens_mask: bool = False,
    ) -> BatchEncoding:
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        pairs: list[str] | None = None
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]  # type: ignore[list-item]
            if len(pairs) != len(texts):
                raise UserError(f"got {len(texts)} texts and {len(pairs)} text pairs; pass one pair per text")
        first = self._encode_texts(texts)
        second = self._encode_texts(pairs) if pairs is not None else [None] * len(texts)
        strategy = _truncation_strategy(truncation)
        limit = max_length if max_length is not None else self.model_max_length

        rows: list[dict[str, list[int]]] = []
        for ids_0, ids_1 in zip(first, second, strict=True):
            if strategy is not None:
                n_special = (3 if ids_1 is not None else 2) if add_special_tokens else 0
                ids_0, ids_1 = _truncate(ids_0, ids_1, limit - n_special, strategy)
            if add_special_tokens:
                row = {"input_ids": self.build_inputs_with_special_tokens(ids_0, ids_1),
                       "token_type_ids": self.create_token_type_ids_from_sequences(ids_0, ids_1),
                       "special_tokens_mask": self.get_special_tokens_mask(ids_0, ids_1)}
            else:
                ids = ids_0 + (ids_1 or [])
                row = {"input_ids": ids, "token_type_ids": [0] * len(ids_0) + [1] * len(ids_1 or []),
                       "special_tokens_mask": [0] * len(ids)}
            row["attention_mask"] = [1] * len(row["input_ids"])
            rows.append(row)
        rows = self._pad(rows, padding, max_length)

        keys = ["input_ids"]
        keys += ["token_type_ids"] if return_token_type_ids else []
        keys += ["attention_mask"] if return_attention_mask else []
        keys += ["special_tokens_mask"] if return_special_tokens_mask else []
        out = BatchEncoding({k: [row[k] for row in rows] if batched else rows[0][k] for k in keys})
        return _as_tensors(out, return_tensors) if return_tensors else out

    def _pad(self, rows: list[dict[str, list[int]]], padding: bool | str,
             max_length: int | None) -> list[dict[str, list[int]]]:
        if padding in (False, "do_not_pad"):
            return rows
        if padding in (True, "longest"):
            target = max(len(r["input_ids"]) for r in rows)
        elif padding == "max_length":
            target = max_length if max_length is not None else self.model_max_length
        else:
            raise UserError(f"padding={padding!r} is not one of True, False, 'longest', 'max_length'")
        if self.pad_token_id is None:
            raise UserError("this tokenizer has no [PAD] token, so it cannot pad; pass padding=False")
        fill = {"input_ids": self.pad_token_id, "token_type_ids": 0, "attention_mask": 0,
                "special_tokens_mask": 1}
        return [{k: v + [fill[k]] * (target - len(v)) for k, v in r.items()} for r in rows]

    # -- decoding ----------------------------------------------------------------------------------------
    def decode(self, token_ids: Sequence[int] | np.ndarray | Any, skip_special_tokens: bool = False) -> str:
        return self._decode([int(i) for i in np.asarray(token_ids).reshape(-1)], skip_special_tokens)

    def batch_decode(self, sequences: Sequence[Sequence[int]] | Any, skip_special_tokens: bool = False
                     ) -> list[str]:
        return [self.decode(seq, skip_special_tokens=skip_special_tokens) for seq in sequences]

    # -- files ---------------------------------------------------------------------------------------------
    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str]:
        """Copy the SentencePiece model (the vocabulary) into `save_directory`."""
        save_directory = Path(save_directory)
        if not save_directory.is_dir():
            raise UserError(f"vocabulary directory {save_directory} does not exist; create it first")
        target = save_directory / ((filename_prefix + "-" if filename_prefix else "") + SPM_FILE)
        target.write_bytes(self._spm_bytes())
        return (str(target),)

    def _spm_bytes(self) -> bytes:
        raise NotImplementedError


def _truncation_strategy(truncation: bool | str) -> str | None:
    if truncation in (False, "do_not_truncate"):
        return None
    if truncation is True:
        return "longest_first"
    if truncation in ("longest_first", "only_first", "only_second"):
        return truncation  # type: ignore[return-value]
    raise UserError(f"truncation={truncation!r} is not one of True, False, 'longest_first', 'only_first', "
                    "'only_second'")


def _truncate(ids_0: list[int], ids_1: list[int] | None, budget: int, strategy: str
              ) -> tuple[list[int], list[int] | None]:
    """Hugging Face's truncation: drop tokens from the end until the sequence(s) fit `budget`."""
    if budget < 0:
        raise UserError("max_length is shorter than the special tokens alone; pass a larger max_length")
    excess = len(ids_0) + len(ids_1 or []) - budget
    if excess <= 0:
        return ids_0, ids_1
    if strategy == "only_first" or ids_1 is None:
        if strategy == "only_second" or excess > len(ids_0):
            raise UserError(f"cannot truncate to max_length with truncation={strategy!r}; use "
                            "truncation='longest_first' or a larger max_length")
        return ids_0[:len(ids_0) - excess], ids_1
    if strategy == "only_second":
        if excess > len(ids_1):
            raise UserError("cannot truncate the second sequence enough; use truncation='longest_first'")
        return ids_0, ids_1[:len(ids_1) - excess]
    # tokenizers' LongestFirst, which transformers' fast RemBERT runs: the shorter sequence keeps its length while
    # it fits in half the budget; otherwise each gets half, and an odd token goes to the longer (the second on ties).
    # (transformers' slow class cuts one token at a time from the longer, the second on ties: on ties with an odd
    # budget the two transformers classes differ, and this follows the fast one.)
    swap = len(ids_0) > len(ids_1)
    short, long = sorted((len(ids_0), len(ids_1)))
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short = budget // 2
        long = short + budget % 2
    n0, n1 = (long, short) if swap else (short, long)
    return ids_0[:n0], ids_1[:n1]


def _as_tensors(enc: BatchEncoding, kind: str) -> BatchEncoding:
    lengths = {len(row) for row in enc["input_ids"]} if enc["input_ids"] and isinstance(
        enc["input_ids"][0], list) else {0}
    if len(lengths) > 1:
        raise UserError("sequences have different lengths; pass padding=True to return tensors")
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
    if kind == "np":
        return BatchEncoding(arrays)
    if kind == "pt":
        import torch

        return BatchEncoding({k: torch.from_numpy(v) for k, v in arrays.items()})
    if kind == "tf":
        import tensorflow as tf

        return BatchEncoding({k: tf.constant(v) for k, v in arrays.items()})
    raise UserError(f"return_tensors={kind!r} is not one of 'np', 'pt', 'tf'")


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _required(directory: Path, name: str) -> Path:
    """`directory / name`, which from_pretrained cannot do without."""
    if not (directory / name).is_file():
        raise UserError(f"{directory} has no {name}; write it with: convert-rembert tokenizer SPM -o {directory}")
    return directory / name


def _require_sources(source_dir: Path | None, vocab_file: Path | None = None) -> None:
    """Before a save writes anything: the files it copies from where the tokenizer was loaded must still be there
    (tokenizer_config.json and special_tokens_map.json are copied, not rebuilt)."""
    if source_dir is not None and not source_dir.is_dir():
        raise UserError(f"the folder this tokenizer was loaded from, {source_dir}, is gone, and saving copies its "
                        "tokenizer_config.json and special_tokens_map.json: load the tokenizer again from a folder "
                        "that has them")
    if vocab_file is not None and not vocab_file.is_file():
        raise UserError(f"{vocab_file}, the vocabulary this tokenizer was loaded with, is gone: load the tokenizer "
                        "again from a folder that has it")


def _save_common(tokenizer: _RemBertTokenizerBase, directory: str | Path, source_dir: Path | None) -> Path:
    _require_sources(source_dir)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_vocabulary(directory)
    _copy_from_source(source_dir, directory, (CONFIG_FILE, SPECIAL_MAP_FILE, TOKENIZER_FILE))
    return directory


def _copy_from_source(source_dir: Path | None, directory: Path, names: tuple[str, ...]) -> None:
    """The files the tokenizer was loaded with, copied as they are into `directory`: unless that is the same
    folder, however spelled (a file copied onto itself is an error)."""
    if source_dir is None or os.path.samefile(source_dir, directory):
        return
    for name in names:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, directory / name)


class RemBertTokenizer(_RemBertTokenizerBase):
    """The slow tokenizer: SentencePiece on the text between special tokens."""

    def __init__(self, vocab_file: str | Path, model_max_length: int = 512) -> None:
        self.vocab_file = Path(vocab_file)
        self._info = read_sentencepiece(self.vocab_file)
        self.sp_model = self._info.processor
        specials = [self._info.pieces[i][0] for i, special in added_piece_ids(self._info) if special]
        spec = self._info.proto.normalizer_spec
        self._strip_first_space = spec.add_dummy_prefix
        self._unk_surface = self._info.proto.trainer_spec.unk_surface or " \u2047 "
        self._source_dir: Path | None = None
        super().__init__(special_ids=self._info.special_ids, unk_token=self._info.pieces[self._info.unk_id][0],
                         special_tokens=specials, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "RemBertTokenizer":
        directory = Path(directory)
        spm_file = _required(directory, SPM_FILE)
        config = _read_config(directory)
        tok = cls(spm_file, model_max_length=config.get("model_max_length", 512))
        tok._source_dir = directory
        return tok

    def save_pretrained(self, directory: str | Path) -> Path:
        return _save_common(self, directory, self._source_dir)

    def _spm_bytes(self) -> bytes:
        return self._info.serialized

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        return {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}

    def _encode_one(self, text: str) -> tuple[list[int], list[str]]:
        ids: list[int] = []
        pieces: list[str] = []
        for i, part in enumerate(split_on_specials(text, self.all_special_tokens)):
            if i % 2:
                ids.append(self.sp_model.piece_to_id(part))
                pieces.append(part)
            elif part:
                part_ids = self.sp_model.encode(part)
                ids += part_ids
                # By id, so that an unknown run reads "<unk>" (sentencepiece would give its surface text).
                pieces += [self.sp_model.id_to_piece(i) for i in part_ids]
        return ids, pieces

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_one(t)[0] for t in texts]

    def tokenize(self, text: str) -> list[str]:
        return self._encode_one(text)[1]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.sp_model.piece_to_id(tokens)
        return [self.sp_model.piece_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self.sp_model.id_to_piece(int(ids))
        return [self.sp_model.id_to_piece(int(i)) for i in ids]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        # The fast tokenizer's decoder, step by step: <unk> -> its surface, "▁" -> " ", byte pieces ->
        # UTF-8, join, drop the first space. SentencePiece's own decode agrees on every id list that its
        # encode makes (tested); it differs on purpose for special tokens.
        special = set(self.all_special_ids)
        parts: list[str] = []
        pending: list[int] = []
        for i in ids:
            if skip_special_tokens and i in special:
                continue
            piece = self.sp_model.id_to_piece(i)
            if self.sp_model.is_byte(i):
                pending.append(int(piece[3:5], 16))
                continue
            parts += _flush_bytes(pending)
            pending = []
            parts.append(self._unk_surface if i == self.unk_token_id else piece.replace(SPACE_SYMBOL, " "))
        parts += _flush_bytes(pending)
        text = "".join(parts)
        return text[1:] if self._strip_first_space and text.startswith(" ") else text


def _flush_bytes(pending: list[int]) -> list[str]:
    """Byte pieces as text; an invalid UTF-8 run becomes one U+FFFD per byte (as tokenizers does)."""
    if not pending:
        return []
    try:
        return [bytes(pending).decode("utf-8")]
    except UnicodeDecodeError:
        return ["\ufffd" * len(pending)]


def json_member(text: str, *path: str) -> Any:
    """The value at `path` (keys into nested objects) of a JSON document, decoding only the members before it
    on the way down: a cheap read of a small field that precedes a huge one. KeyError if it is absent."""
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    for key in path:
        if text[position:position + 1] != "{":
            raise KeyError(key)
        position = _skip_space(text, position + 1)
        while True:
            if text[position] == "}":
                raise KeyError(key)
            name, position = decoder.raw_decode(text, position)
            position = _skip_space(text, position)
            if text[position] != ":":
                raise ValueError(f"expected ':' at {position}")
            position = _skip_space(text, position + 1)
            if name == key:
                break
            _, position = decoder.raw_decode(text, position)  # a member before the one wanted
            position = _skip_space(text, position)
            if text[position] == ",":
                position = _skip_space(text, position + 1)
    return decoder.raw_decode(text, position)[0]


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\n\r":
        position += 1
    return position


class RemBertTokenizerFast(_RemBertTokenizerBase):
    """The fast tokenizer: `tokenizer.json` run by the tokenizers library."""

    def __init__(self, tokenizer_file: str | Path, model_max_length: int = 512,
                 vocab_file: str | Path | None = None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer_file = Path(tokenizer_file)
        self.vocab_file = Path(vocab_file) if vocab_file else None
        try:
            self._tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        except Exception as exc:
            raise UserError(f"cannot read {self.tokenizer_file} ({str(exc)[:100]}); rewrite it with: "
                            "convert-rembert tokenizer SPM -o DIR") from None
        added = self._tokenizer.get_added_tokens_decoder()
        specials = [t.content for _, t in sorted(added.items()) if t.special]
        special_ids = {t: self._tokenizer.token_to_id(t) for t in (CLS, SEP, PAD, MASK)
                       if self._tokenizer.token_to_id(t) is not None}
        # Unigram names its unk by id, BPE by text; both come before the vocabulary in the model's JSON, whose
        # 250,300 entries as Python objects took 0.5 s to parse (and 0.45 s of garbage collection after).
        serialized = self._tokenizer.to_str()
        if json_member(serialized, "model", "type") == "Unigram":
            unk_id = json_member(serialized, "model", "unk_id")
            unk = self._tokenizer.id_to_token(unk_id) if unk_id is not None else None
        else:
            unk = json_member(serialized, "model", "unk_token")
        self._source_dir: Path | None = self.tokenizer_file.parent
        super().__init__(special_ids=special_ids, unk_token=unk, special_tokens=specials,
                         model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "RemBertTokenizerFast":
        directory = Path(directory)
        tokenizer_file = _required(directory, TOKENIZER_FILE)
        config = _read_config(directory)
        spm_file = directory / SPM_FILE
        return cls(tokenizer_file, model_max_length=config.get("model_max_length", 512),
                   vocab_file=spm_file if spm_file.is_file() else None)

    def save_pretrained(self, directory: str | Path) -> Path:
        _require_sources(self._source_dir, self.vocab_file)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_FILE).write_text(self._tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
        if self.vocab_file is not None:
            self.save_vocabulary(directory)
        _copy_from_source(self._source_dir, directory, (CONFIG_FILE, SPECIAL_MAP_FILE))
        return directory

    def _spm_bytes(self) -> bytes:
        if self.vocab_file is None:
            raise UserError("this fast tokenizer was loaded without sentencepiece.model, so it has no "
                            "vocabulary file to save; load it from the converter's output directory")
        return self.vocab_file.read_bytes()

    @property
    def backend_tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def tokenize(self, text: str) -> list[str]:
        # By id: the encoding's own token text would include the space an lstrip token took.
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return [self._tokenizer.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        unk = self._tokenizer.token_to_id(self.unk_token)

        def one(t: str) -> int:
            i = self._tokenizer.token_to_id(t)
            return unk if i is None else i

        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(int(ids))
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
