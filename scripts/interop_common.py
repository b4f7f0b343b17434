"""What the interop checks (scripts/pt_interop_check.py, scripts/tf_interop_check.py) share: the PASS/FAIL
lines, the tokenizer as transformers' AutoTokenizer gives it, and running the card's usage snippets."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np

failures: list[str] = []


def check(ok: bool, what: str, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {what}{'  ' + detail if detail else ''}", flush=True)
    if not ok:
        failures.append(what)


def check_auto_tokenizer(bundle: Path, max_position_embeddings: int) -> None:
    """AutoTokenizer gives tokenizer.json's ids on every probe line and SentencePiece's ids on as many lines as
    the converter measured (the rest only in documented classes); model_max_length is the model's."""
    import sentencepiece as spm
    import transformers
    from tokenizers import Tokenizer

    from converters.tokenizer import measure_agreement, probe_corpus, read_sentencepiece, reference_ids

    tokenizer = transformers.AutoTokenizer.from_pretrained(bundle)
    raw = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(bundle / "sentencepiece.model"))
    specials = [t.content for t in raw.get_added_tokens_decoder().values() if t.special]
    lines = probe_corpus()
    same_as_file = same_as_spm = 0
    for line in lines:
        ids = tokenizer(line)["input_ids"]
        same_as_file += ids == raw.encode(line).ids
        same_as_spm += ids == [tokenizer.cls_token_id, *reference_ids(sp, line, specials), tokenizer.sep_token_id]
    measured = measure_agreement(read_sentencepiece(bundle / "sentencepiece.model"), raw, lines)
    check(same_as_file == len(lines), f"AutoTokenizer ({type(tokenizer).__name__}) gives tokenizer.json's ids",
          f"{same_as_file}/{len(lines)} probe lines")
    check(same_as_spm == measured.equal and not measured.unexplained,
          "AutoTokenizer gives SentencePiece's ids where the converter measured it does",
          f"{same_as_spm}/{len(lines)} lines; the rest in documented classes {measured.classes}")
    check(tokenizer.model_max_length == max_position_embeddings,
          "model_max_length is the config's max_position_embeddings",
          f"{tokenizer.model_max_length} vs {max_position_embeddings}")


def run_snippet(bundle: Path, code: str) -> subprocess.CompletedProcess:
    """Run code as written, from the bundle's parent folder (the card loads the folder by its name)."""
    return subprocess.run([sys.executable, "-c", code], cwd=bundle.parent, capture_output=True, text=True,
                          timeout=600)


def card_snippet(bundle: Path, name: str) -> str | None:
    from validation.bundle import card_snippets

    return card_snippets((bundle / "README.md").read_text(encoding="utf-8")).get(name)


def last_line(run: subprocess.CompletedProcess) -> str:
    text = (run.stdout if run.returncode == 0 else run.stderr).strip()
    return text.splitlines()[-1][-300:] if text else ""


TOLERANCE = 1e-5


def max_diff(a, b) -> tuple[float, int]:
    """Max abs difference over two nested outputs (torch or TensorFlow tensors, arrays), and how many tensors
    were compared."""
    if a is None or b is None:
        return (float("inf"), 0) if (a is None) != (b is None) else (0.0, 0)
    if isinstance(a, (tuple, list)):
        if len(a) != len(b):
            return float("inf"), 0
        parts = [max_diff(x, y) for x, y in zip(a, b, strict=True)]
        return max([0.0] + [p[0] for p in parts]), sum(p[1] for p in parts)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf"), 0
    return (float(np.max(np.abs(a - b))) if a.size else 0.0), 1


def check_outputs(name: str, mine, theirs, skip: str, num_layers: int, what: str) -> None:
    """Every output field of our model's result against transformers' (fields named `skip` aside)."""
    worst, count = 0.0, 0
    for field in dataclasses.fields(mine):
        if field.name == skip:
            continue
        diff, n = max_diff(getattr(mine, field.name), getattr(theirs, field.name, None))
        worst, count = max(worst, diff), count + n
        if diff >= TOLERANCE:
            print(f"      {field.name}: max abs diff {diff:.3e}")
    check(worst < TOLERANCE and count > 2 * num_layers, f"{name}: {what}",
          f"{count} tensors, max abs diff {worst:.2e}")
