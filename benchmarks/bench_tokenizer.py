"""Batch-encoding throughput: the converted fast tokenizer vs SentencePiece, on the probe corpus.

    python benchmarks/bench_tokenizer.py [--model examples/tiny-rembert/sentencepiece.model] [--lines 4000]

Both sides encode the same lines without special tokens; ids are checked equal (outside the documented
difference classes) before anything is timed. Prints the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
from tokenizers import Tokenizer

from testkit.spm_models import probe_corpus
from converters.tokenizer import convert_tokenizer, measure_agreement, read_sentencepiece

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "examples/tiny-rembert/sentencepiece.model")
    parser.add_argument("--lines", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    lines = probe_corpus(args.lines, seed=99)
    n_chars = sum(len(t) for t in lines)
    with tempfile.TemporaryDirectory() as tmp:
        report = convert_tokenizer(args.model, Path(tmp) / "tok")
        fast = Tokenizer.from_file(str(Path(tmp) / "tok" / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(args.model))
    agreement = measure_agreement(read_sentencepiece(args.model), fast, lines)
    print(f"model {args.model.name}: {report.model_type}, {report.vocab_size} pieces; corpus {len(lines)} lines, "
          f"{n_chars} chars; ids equal to SentencePiece's on {agreement.equal}/{agreement.total} lines, "
          f"differences by class {agreement.classes}, unexplained {len(agreement.unexplained)}")

    threads = os.cpu_count() or 1
    runs = {
        "sentencepiece encode(list), 1 thread": lambda: sp.encode(lines, num_threads=1),
        f"sentencepiece encode(list), {threads} threads": lambda: sp.encode(lines, num_threads=threads),
        "tokenizers encode_batch (rayon, all cores)": lambda: fast.encode_batch(lines, add_special_tokens=False),
        "tokenizers encode, one line at a time": lambda: [fast.encode(t, add_special_tokens=False) for t in lines],
    }
    for name, fn in runs.items():
        seconds = _best(fn, args.repeats)
        print(f"{name:48s} {len(lines) / seconds:>10.0f} lines/s {n_chars / seconds / 1e6:>7.2f} M chars/s")


if __name__ == "__main__":
    main()
