"""User-defined pieces in a BPE model: where the fast tokenizer matches them, and what each choice gives.

    python benchmarks/tokenizer_bpe_user_defined.py

Trains a BPE model (nmt_nfkc) with the user-defined pieces '<url>', '▁"', '<|tag|>', '@@' (plus RemBERT's
[CLS]/[SEP]/[MASK]) and counts, for the probe corpus and for the probe corpus with one piece inserted into
every line, how many lines get SentencePiece's ids (special-token strings split out first) when the
user-defined pieces are added tokens matched
- `raw`: in the raw text (normalized=False) for every piece (the converter before this study);
- `normalized`: in the normalized text (normalized=True) for every piece;
- `converter`: in the normalized text for pieces the normalizer leaves as they are (those beginning with '▁'),
  in the raw text for the others (what converters/tokenizer.py does now).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sentencepiece as spm  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from converters.tokenizer import _special_strings, build_tokenizer, probe_corpus, read_sentencepiece, reference_ids  # noqa: E402
from testkit.spm_models import train_sentencepiece  # noqa: E402

USER_DEFINED = ("[CLS]", "[SEP]", "[MASK]", "<url>", "\u2581\"", "<|tag|>", "@@")


def variant(info, mode: str) -> Tokenizer:
    built = build_tokenizer(info)
    document = json.loads(built.to_str())
    for token in document["added_tokens"]:
        if not token["special"]:
            if mode == "raw":
                token["normalized"] = False
            elif mode == "normalized":
                token["normalized"] = True
    return Tokenizer.from_str(json.dumps(document))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = train_sentencepiece(Path(tmp) / "bpe-user.model", model_type="bpe", vocab_size=541,
                                   user_defined_symbols=USER_DEFINED)
        info = read_sentencepiece(path)
        sp = spm.SentencePieceProcessor(model_file=str(path))
    rng = random.Random(0)
    lines = probe_corpus()

    def inserted(piece: str) -> list[str]:
        out = []
        for line in lines:
            words = line.split(" ")
            words.insert(rng.randrange(len(words) + 1), piece)
            out.append(" ".join(words))
        return out

    corpora = {"probe": lines, "' \"' inserted": inserted(' "'), "' <url> ' inserted": inserted("<url>"),
               "' <|tag|> ' inserted": inserted("<|tag|>"),
               "'<url>' for the first space": [line.replace(" ", "<url>", 1) for line in lines]}
    specials = _special_strings(info)
    print(f"{'mode':11}" + "".join(f"{name:>30}" for name in corpora))
    for mode in ("raw", "normalized", "converter"):
        tokenizer = variant(info, mode)
        cells = []
        for texts in corpora.values():
            equal = sum(tokenizer.encode(t, add_special_tokens=False).ids == reference_ids(sp, t, specials)
                        for t in texts)
            cells.append(f"{equal}/{len(texts)}")
        print(f"{mode:11}" + "".join(f"{cell:>30}" for cell in cells))


if __name__ == "__main__":
    main()
