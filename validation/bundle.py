"""`bundle`: a publishable folder in one pass: every format, the tokenizer, config, a model card, the parity
report and sha256 checksums. The parity check runs on the staged files; if it fails, nothing is published."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from converters.convert import ConversionResult, ConvertOptions, convert_checkpoint, sha256_file
from rembert_ref.errors import UserError
from validation.parity import HEADS, ParityReport, verify_conversion

CHECKSUMS_NAME = "SHA256SUMS"
MODEL_CARD_NAME = "README.md"


class ParityFailure(UserError):
    """Parity failed: the message names the worst rows; the bundle was not written."""


@dataclass
class BundleResult:
    output_dir: Path
    files: list[Path]
    parity: ParityReport
    conversion: ConversionResult


def bundle_checkpoint(
    ckpt: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: ConvertOptions,
    *,
    formats: tuple[str, ...] = ("pytorch", "safetensors", "tf2"),
    tolerance: float | None = None,
    heads: tuple[str, ...] = HEADS,
) -> BundleResult:
    parity: dict[str, ParityReport] = {}

    def verify_and_describe(staged: ConversionResult) -> None:
        report = verify_conversion(ckpt, staged.output_dir, original_config=options.config, heads=heads,
                                   tolerance=tolerance)
        parity["report"] = report
        if not report.passed:
            worst = sorted(report.failures, key=lambda r: -r.max_abs / max(r.tolerance, 1e-30))[:3]
            rows = "; ".join(f"{r.head}/{r.format}/{r.output} max abs {r.max_abs:.2e} > {r.tolerance:.2e}"
                             for r in worst)
            raise ParityFailure(f"parity failed on {len(report.failures)} of {len(report.rows)} rows ({rows}); "
                                "nothing was written: run `convert-rembert verify` on a plain conversion for the "
                                "full table")
        report.write(staged.output_dir)
        (staged.output_dir / MODEL_CARD_NAME).write_text(model_card(staged, report), encoding="utf-8")
        write_checksums(staged.output_dir)

    conversion = convert_checkpoint(ckpt, output_dir, list(formats), options, before_commit=verify_and_describe)
    out = Path(output_dir)
    return BundleResult(out, sorted(p for p in out.iterdir() if p.is_file()), parity["report"], conversion)


def write_checksums(directory: Path) -> Path:
    """`sha256sum -c SHA256SUMS` checks the folder."""
    lines = [f"{sha256_file(p)}  {p.name}" for p in sorted(directory.iterdir())
             if p.is_file() and p.name != CHECKSUMS_NAME]
    path = directory / CHECKSUMS_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def model_card(staged: ConversionResult, parity: ParityReport) -> str:
    """A deterministic model card: what the folder holds, how it was made, what parity was measured."""
    report, config = staged.report, staged.plan.config
    files = sorted(p.name for p in staged.output_dir.iterdir() if p.is_file())
    worst: dict[tuple[str, str], float] = {}
    for row in parity.rows:
        key = (row.head, row.format)
        worst[key] = max(worst.get(key, 0.0), row.rel_err)
    act = "tanh approximation of gelu (as the original TF1 graph)" if config.hidden_act == "gelu_new" \
        else "exact erf gelu"
    lines = [
        "---",
        "library_name: transformers",
        "tags: [rembert, converted]",
        "---",
        "",
        f"# RemBERT converted from `{report['source']['checkpoint']}`",
        "",
        "Converted by rembert-convert from Google's original TF1 checkpoint. Weight names follow Hugging Face "
        "transformers' RemBERT, so the files load in transformers and in `rembert_ref`.",
        "",
        "## Model",
        "",
        f"- {config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
        f"intermediate {config.intermediate_size}",
        f"- vocabulary {config.vocab_size}, input embedding {config.input_embedding_size}, output embedding "
        f"{config.output_embedding_size}",
        f"- activation `{config.hidden_act}`: {act}",
        f"- weights dtype {report['dtype']}; masked-LM head {'included' if report['mlm_head'] else 'not included'}",
        f"- {len(report['mapped'])} tensors converted; {len(report['ignored'])} checkpoint variables ignored "
        "(optimizer state, global_step, next-sentence head): see `conversion_report.json`",
        "",
        "## Files",
        "",
        *[f"- `{name}`" for name in files + [CHECKSUMS_NAME, MODEL_CARD_NAME] if name != MODEL_CARD_NAME],
        "",
        "Check them with `sha256sum -c SHA256SUMS`.",
        "",
        "## Parity",
        "",
        f"Measured on {parity.inputs['batch']} x {parity.inputs['seq']} tokens: {len(parity.rows)} outputs, "
        f"{'all within' if parity.passed else 'NOT all within'} tolerance (atol {parity.tolerance['atol']:g} + "
        f"rtol {parity.tolerance['rtol']:g} x scale). Base and masked-LM heads are compared with a float64 "
        "forward pass of the original TF1 graph; task heads across formats. Worst relative error:",
        "",
        "| head | " + " | ".join(parity.formats) + " |",
        "| --- |" + " --- |" * len(parity.formats),
    ]
    for head in dict.fromkeys(r.head for r in parity.rows):
        cells = [f"{worst[(head, f)]:.1e}" if (head, f) in worst else "reference" for f in parity.formats]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Full table: `parity_report.md` / `parity_report.json`.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoTokenizer, RemBertForMaskedLM",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "model = RemBertForMaskedLM.from_pretrained(PATH)",
        "```",
        "",
    ]
    return "\n".join(lines)
