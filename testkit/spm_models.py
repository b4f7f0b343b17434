"""SentencePiece fixtures: a multilingual probe corpus and a fast trainer for small test models.

Used by the tests, the shipped example (`examples/tiny-rembert/sentencepiece.model`) and the benchmarks, so
that every SentencePiece model the project relies on is made here, from text the project generates.

The corpus is built to hit what breaks SentencePiece -> tokenizers conversions: accented Latin, Cyrillic,
Greek, CJK, Arabic and Hebrew with bidi marks, Devanagari, Thai, emoji and ZWJ sequences, digits,
punctuation runs, tabs, newlines, repeated/leading/trailing spaces, stacked combining accents, full-width
forms, the literal special-token strings and empty lines.

Remake the example model with:

    python -m testkit.spm_models example examples/tiny-rembert/sentencepiece.model
"""

from __future__ import annotations

import argparse
import io
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

# RemBERT's special pieces. The real model has pad 0, unk 1, [CLS] 312, [SEP] 313, [MASK] 336; small
# models cannot keep those ids, so every consumer reads the ids from the model file.
PAD_PIECE = "[PAD]"
UNK_PIECE = "<unk>"
REMBERT_SPECIAL_PIECES = ("[CLS]", "[SEP]", "[MASK]")

# Word pools per script. Kept small so that training stays at seconds and a 512-piece vocabulary is
# reachable with full character coverage.
WORDS: dict[str, tuple[str, ...]] = {
    "latin": ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "model", "token", "piece",
              "language", "hello", "world", "data", "text", "converter", "weights", "checkpoint", "paris"),
    "accents": ("café", "naïve", "Über", "straße", "ñandú", "São", "Paulo", "façade", "élève", "Tiếng",
                "Việt", "Ærøskøbing", "Łódź", "crème", "brûlée", "jalapeño", "Zürich", "Ångström"),
    "cyrillic": ("Привет", "мир", "Москва", "съешь", "ещё", "этих", "мягких", "булок", "язык", "модель",
                 "текст", "Київ", "ґанок"),
    "greek": ("Καλημέρα", "κόσμε", "ελληνικά", "γλώσσα", "λόγος", "Ἀθῆναι", "φιλοσοφία", "ΣΟΦΙΑ"),
    "cjk": ("東京都", "中文", "字符", "日本語", "テキスト", "の", "は", "한국어", "문장", "北京", "漢字",
            "ひらがな", "カタカナ"),
    "arabic": ("مرحبا", "بالعالم", "اللغة", "العربية", "كتاب", "سلام", "مدينة"),
    "hebrew": ("שלום", "עולם", "עברית", "ספר", "ירושלים"),
    "devanagari": ("नमस्ते", "दुनिया", "हिन्दी", "भाषा", "क्षत्रिय", "पुस्तक"),
    "thai": ("สวัสดี", "ชาวโลก", "ภาษาไทย", "หนังสือ", "กรุงเทพ"),
    "emoji": ("👍", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "🇯🇵", "😀", "❤\ufe0f", "🧑\u200d💻"),
    "digits": ("2024", "3.14159", "1,000,000", "٣٤٥", "१२३", "１２３", "0x1F", "42"),
    "punct": ("...", "!!!", "?!", "---", "``quoted''", "«", "»", "—", "(", ")", "\"", "'", ";", ":",
              "…", "。", "、", "¿", "¡"),
    "fullwidth": ("ＡＢＣ", "ｈｅｌｌｏ", "（括弧）", "ｶﾀｶﾅ", "！", "＄１００"),
    "combining": ("e\u0301", "a\u0308\u0304", "o\u0302\u0323", "Z\u0324\u0354\u0367\u0311\u0313",
                  "n\u0303", "u\u0308\u0301", "i\u0307\u0300"),
    "special": ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "<unk>", "<s>", "</s>"),
}

# Bidi control marks (LRM, RLM, RLE, PDF, RLI, PDI, ALM) mixed into Arabic and Hebrew text.
BIDI_MARKS = ("\u200e", "\u200f", "\u202b", "\u202c", "\u2067", "\u2069", "\u061c")
SEPARATORS = (" ", " ", " ", " ", "  ", "\t", "\n", "   ", " \u00a0", "\u3000", "")

# Hand-written lines that must always be probed: the edge cases named in issue 3.
EDGE_LINES: tuple[str, ...] = (
    "",
    " ",
    "   ",
    "\t",
    "\n",
    " \t \n ",
    "hello",
    " hello",
    "hello ",
    "  hello   world  ",
    "hello\tworld\nagain",
    "[CLS] hello [SEP] world [SEP]",
    "[MASK]",
    " [MASK] ",
    "Paris is the [MASK] of France.",
    "a[MASK]b",
    "[PAD][PAD] <unk> <s></s>",
    "...",
    "....",
    ".....",
    "!!!???...",
    "``double'' and ''single``",
    "e\u0301e\u0301e\u0301",
    "a\u0308\u0304\u0301\u0323",
    "Z\u0324\u0354\u0367\u0311\u0313a\u0356\u032d\u0308\u0307l\u036e\u0312\u036bg\u030c\u0317\u035a",
    "\u200fשלום\u200e world \u202bعربي\u202c",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "ＦＵＬＬ　ｗｉｄｔｈ　１２３",
    "ｶﾀｶﾅ ﾊﾝｶｸ",
    "日本語のテキストと中文字符",
    "สวัสดีชาวโลก",
    "नमस्ते दुनिया",
    "\u00a0non\u00a0breaking\u00a0",
    "tab\t\tdouble",
    "trailing spaces   ",
    "   leading spaces",
    "\ufeffbom",
    "ﬁ ﬂ ﬀ ™ ½ ①",
    "x\u0000y\u0007z",
    "▁literal meta symbol▁",
    "a ▁ ",
)

PROBE_CORPUS_FILE = Path(__file__).resolve().parent.parent / "converters" / "probe_corpus.json"


def _line(rng: random.Random) -> str:
    """One random line: words from one to three scripts, joined by varied separators."""
    scripts = rng.sample(sorted(WORDS), k=rng.randint(1, 3))
    parts: list[str] = []
    for _ in range(rng.randint(1, 12)):
        script = rng.choice(scripts)
        word = rng.choice(WORDS[script])
        if script in ("arabic", "hebrew") and rng.random() < 0.3:
            word = rng.choice(BIDI_MARKS) + word if rng.random() < 0.5 else word + rng.choice(BIDI_MARKS)
        parts.append(word)
        parts.append(rng.choice(SEPARATORS) if rng.random() < 0.9 else rng.choice(WORDS["punct"]))
    text = "".join(parts)
    roll = rng.random()
    if roll < 0.1:
        text = " " * rng.randint(1, 3) + text  # leading spaces
    elif roll < 0.2:
        text = text.rstrip(" ")  # no trailing separator
    return text


def probe_corpus(n_random: int = 400, seed: int = 0) -> list[str]:
    """The probe corpus: every edge line, then `n_random` generated lines (deterministic for a seed)."""
    rng = random.Random(seed)
    return list(EDGE_LINES) + [_line(rng) for _ in range(n_random)]


def training_corpus(n_lines: int = 3000, seed: int = 1234) -> list[str]:
    """Training text: generated lines plus every pool word once, so every character is seen."""
    rng = random.Random(seed)
    lines = [_line(rng) for _ in range(n_lines)]
    lines += [" ".join(words) for words in WORDS.values()]
    return [line for line in lines if line.strip()]


def train_sentencepiece(
    output_path: str | Path,
    *,
    model_type: str = "unigram",
    vocab_size: int = 512,
    normalization: str = "nmt_nfkc",
    byte_fallback: bool = False,
    user_defined_symbols: Sequence[str] = REMBERT_SPECIAL_PIECES,
    control_symbols: Sequence[str] = (),
    sentences: Iterable[str] | None = None,
    seed: int = 1234,
    **trainer_options: object,
) -> Path:
    """Train a small SentencePiece model on the generated corpus and write it to `output_path`.

    Ids follow RemBERT's layout at the start: `[PAD]` 0, `<unk>` 1, no BOS/EOS pieces. `[CLS]`, `[SEP]`
    and `[MASK]` are user-defined symbols by default (pass them as `control_symbols` instead to get
    control pieces). `trainer_options` go to SentencePieceTrainer as they are (remove_extra_whitespaces=False,
    denormalization_rule_tsv=...). Returns the path written.
    """
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    text = list(sentences) if sentences is not None else training_corpus(seed=seed)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        normalization_rule_name=normalization,
        byte_fallback=byte_fallback,
        character_coverage=1.0,
        pad_id=0,
        pad_piece=PAD_PIECE,
        unk_id=1,
        unk_piece=UNK_PIECE,
        bos_id=-1,
        eos_id=-1,
        user_defined_symbols=list(user_defined_symbols),
        control_symbols=list(control_symbols),
        hard_vocab_limit=True,
        # Single-threaded and seeded so the same call writes the same bytes.
        num_threads=1,
        minloglevel=2,
        **trainer_options,
    )
    output_path.write_bytes(model.getvalue())
    return output_path


def handmade_unigram_model(output_path: str | Path, pieces: Sequence[tuple[str, float]],
                           user_defined: Sequence[str] = ()) -> Path:
    """A unigram model with exactly the given normal pieces and scores (identity normalization), then the
    `user_defined` pieces.

    `[PAD]` 0, `<unk>` 1 and `[CLS]`, `[SEP]`, `[MASK]` (control) come first. Used to build exact
    reproducers, such as a float32 score tie.
    """
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.trainer_spec.model_type = 1  # UNIGRAM
    proto.trainer_spec.unk_surface = " \u2047 "
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    for piece, kind, score in [(PAD_PIECE, 3, 0.0), (UNK_PIECE, 2, 0.0)] + [
            (p, 3, 0.0) for p in REMBERT_SPECIAL_PIECES] + [(p, 1, s) for p, s in pieces] + [
            (p, 4, 0.0) for p in user_defined]:
        entry = proto.pieces.add()
        entry.piece, entry.type, entry.score = piece, kind, score
    output_path = Path(output_path)
    output_path.write_bytes(proto.SerializeToString())
    return output_path


def train_example_model(output_path: str | Path) -> Path:
    """The shipped example's model: unigram, exactly 512 pieces, RemBERT's special pieces."""
    return train_sentencepiece(output_path, model_type="unigram", vocab_size=512)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testkit.spm_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    example = sub.add_parser("example", help="train the shipped example's 512-piece unigram model")
    example.add_argument("output", type=Path)
    corpus = sub.add_parser("corpus", help="write the probe corpus the converter ships as data")
    corpus.add_argument("output", type=Path, nargs="?", default=PROBE_CORPUS_FILE)
    args = parser.parse_args(argv)
    path = train_example_model(args.output) if args.command == "example" else write_probe_corpus(args.output)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def probe_corpus_document(n_random: int = 400) -> dict[str, object]:
    """The JSON document of `converters/probe_corpus.json`."""
    return {"about": "The lines on which the tokenizer converter measures agreement with SentencePiece. "
                     "Regenerate with: python -m testkit.spm_models corpus",
            "lines": probe_corpus(n_random)}


def write_probe_corpus(output_path: Path) -> Path:
    output_path.write_text(json.dumps(probe_corpus_document(), ensure_ascii=False, indent=0) + "\n",
                           encoding="utf-8")
    return output_path


if __name__ == "__main__":
    main()
