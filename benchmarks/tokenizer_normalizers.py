"""Why the fast tokenizer's normalization differs from SentencePiece's, and what the alternatives would give.

    python benchmarks/tokenizer_normalizers.py [--model M.model] [--random 2000]

For an nmt_nfkc model (trained here if --model is not given) it prints:
1. for each candidate normalizer that a tokenizer.json can hold, on how many inputs it normalizes exactly as
   SentencePiece does: the probe corpus, random unicode lines, and every rule key of the model's charsmap
   (alone, and between two letters);
2. for `Precompiled` alone, the cause of every differing grapheme cluster.

The converter puts NFC before `Precompiled` where that agrees more often (`nfc_helps`), as it does for
nmt_nfkc: composing first hands `Precompiled` precomposed letters, which it maps one by one like
SentencePiece; the price is that NFC reorders marks written out of canonical order.

SentencePiece applies the charsmap by LONGEST match at each position of the text. tokenizers' Precompiled
works per grapheme cluster: under 6 bytes it looks the whole cluster up, takes the SHORTEST rule that is a
prefix of it and replaces the WHOLE cluster by that rule's output (the rest of the cluster is lost); from
6 bytes on it maps char by char (no sequence rule applies). The causes printed:
- `drop`: the shortest rule covers only the start of the cluster; the rest is lost ('o\u0302\u0323' -> 'ô');
- `nested`: the cluster is itself a rule, but a shorter rule is a prefix of it ('u\u0308\u0301' -> 'ü');
- `long-cluster`: a cluster of 6 bytes or more that a sequence rule would have changed.
"""

from __future__ import annotations

import argparse
import collections
import random
import struct
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import regex
import sentencepiece as spm
from tokenizers import normalizers

from testkit.spm_models import probe_corpus, train_sentencepiece
from converters.tokenizer import (
    build_normalizer,
    nfc_helps,
    read_sentencepiece,
    whitespace_steps,
)


def decode_charsmap(blob: bytes) -> dict[bytes, bytes]:
    """Every rule of a precompiled charsmap (a darts-clone double-array trie + a pool of replacements): used
    here to find inputs that hit sequence rules, and to explain differences."""
    (trie_size,) = struct.unpack_from("<I", blob, 0)
    units = np.frombuffer(blob, dtype="<u4", count=trie_size // 4, offset=4).astype(np.int64)
    pool = blob[4 + trie_size:]
    labels = units & ((1 << 31) | 0xFF)

    def offset(unit: int) -> int:
        return (unit >> 10) << ((unit & (1 << 9)) >> 6)

    rules: dict[bytes, bytes] = {}
    byte_values = np.arange(1, 256)
    stack = [(offset(int(units[0])), b"")]
    while stack:
        node, key = stack.pop()
        children = node ^ byte_values
        inside = children < len(units)
        children, values = children[inside], byte_values[inside]
        hit = labels[children] == values
        for value, child in zip(values[hit], children[hit], strict=True):
            unit = int(units[child])
            next_node = child ^ offset(unit)
            next_key = key + bytes([int(value)])
            if (unit >> 8) & 1:  # has a leaf: the replacement's offset in the pool
                start = int(units[next_node]) & 0x7FFFFFFF
                rules[next_key] = pool[start:pool.index(b"\0", start)]
            stack.append((next_node, next_key))
    return rules


def random_lines(n: int, seed: int = 5) -> list[str]:
    """Mixed lines of ASCII, the BMP below U+3000 (with many combining marks), private use to half-width
    forms, and emoji."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x300, 0x36F), (0xE000, 0xFFEF), (0x1F300, 0x1FAFF)]
    return ["".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 20))) for _ in range(n)]


def longest_match(rules: dict[str, str], text: str) -> str:
    """The charsmap as SentencePiece applies it: longest rule at each position."""
    longest_key = max(map(len, rules))
    out, i = [], 0
    while i < len(text):
        for length in range(min(longest_key, len(text) - i), 0, -1):
            if text[i:i + length] in rules:
                out.append(rules[text[i:i + length]])
                i += length
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def cause(rules: dict[str, str], cluster: str) -> str:
    if len(cluster.encode()) >= 6:
        return "long-cluster"
    prefixes = [n for n in range(1, len(cluster) + 1) if cluster[:n] in rules]
    if prefixes and max(prefixes) == len(cluster):
        return "nested"
    return "drop" if prefixes else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--random", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_sentencepiece(Path(tmp) / "nmt_nfkc.model")
        info = read_sentencepiece(model)
    sp = spm.SentencePieceProcessor(model_proto=info.serialized)
    charsmap = info.proto.normalizer_spec.precompiled_charsmap
    if not charsmap:
        raise SystemExit(f"{model} has no precompiled charsmap: its normalization is the identity")
    rules = {}
    for key, value in decode_charsmap(charsmap).items():
        try:
            rules[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:  # rules for invalid UTF-8 bytes cannot occur in a Python str
            pass

    rest = whitespace_steps(info.proto.normalizer_spec)
    converters_choice = "NFC + Precompiled" if nfc_helps(info) else "Precompiled"
    candidates = {
        "Precompiled": build_normalizer(info, compose_first=False),
        "NFC + Precompiled": build_normalizer(info, compose_first=True),
        "Nmt + NFKC (no charsmap)": normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(), *rest]),
    }
    probe = probe_corpus(400)
    inputs = {
        "probe corpus": probe,
        "probe NFD": [unicodedata.normalize("NFD", line) for line in probe],
        "random lines": random_lines(args.random),
        "charsmap keys": list(rules),
        "x + key + x": [f"x{key}x" for key in rules],
    }
    print(f"model {Path(model).name}: {len(rules)} charsmap rules, {sum(len(k) > 1 for k in rules)} of them "
          "sequences; normalization equal to SentencePiece's:")
    print(f"{'candidate':32s}" + "".join(f"{name:>16s}" for name in inputs))
    for name, normalizer in candidates.items():
        row = [sum(normalizer.normalize_str(t) == sp.normalize(t) for t in texts) for texts in inputs.values()]
        print(f"{name:32s}" + "".join(f"{n:>9d}/{len(t):<6d}" for n, t in zip(row, inputs.values(), strict=True)))
    print(f"the converter chose {converters_choice} for this model (converters/tokenizer.py: nfc_helps)")

    precompiled = normalizers.Precompiled(charsmap)
    causes: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    for text in inputs["probe corpus"] + inputs["random lines"]:
        for cluster in regex.findall(r"\X", text):
            if precompiled.normalize_str(cluster) != longest_match(rules, cluster):
                kind = cause(rules, cluster)
                causes[kind] += 1
                examples.setdefault(kind, cluster)
    print("differing grapheme clusters under Precompiled, by cause (probe corpus + random lines):")
    for kind, count in causes.most_common():
        cluster = examples[kind]
        print(f"  {kind:13s} {count:5d}  e.g. {' '.join(f'U+{ord(c):04X}' for c in cluster)}: SentencePiece "
              f"{longest_match(rules, cluster)!r}, tokenizers {precompiled.normalize_str(cluster)!r}")


if __name__ == "__main__":
    main()
