"""`bundle`: a publishable folder in one pass: every format, the tokenizer, config, a model card, the parity
report and sha256 checksums. The parity check runs on the staged files; if it fails, nothing is published.

The model card (`README.md`) is what a model hub shows and indexes: YAML front matter (license, language,
pipeline_tag, library_name, tags), how the files were made (tool, version, the command, normalised), the measured
parity and tokenizer agreement, usage that runs as written, and how to check the files. `SHA256SUMS` covers
every file but the card, so editing the card on the hub does not break `sha256sum -c SHA256SUMS`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from converters.convert import ConversionResult, ConvertOptions, convert_checkpoint, sha256_file
from converters.mapping import BLEURT_CONFIG, SEQUENCE_CLASSIFICATION
from rembert_ref.config import ACTIVATION_MEANING
from rembert_ref.errors import UserError, require_tensorflow
from validation.parity import HEADS, ParityReport, check_tolerance, imports_ahead, severity, verify_conversion
from converters.progress import StepProgress, terminal_progress

CHECKSUMS_NAME = "SHA256SUMS"
MODEL_CARD_NAME = "README.md"
DEFAULT_LICENSE = "apache-2.0"  # RemBERT's own license
# RemBERT was pretrained on 110 languages; "multilingual" is the hub's tag for that. Pass --language
# (repeatable) to list ISO 639-1 codes instead.
DEFAULT_LANGUAGES = ("multilingual",)
SAMPLE_TEXT = "Paris is the [MASK] of France."
# Fenced code blocks of the card that the interop checks extract and run as written.
SNIPPET_MARK = "<!-- runnable: {} -->"
SNIPPETS = ("pytorch", "tensorflow")

_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*|multilingual")


class ParityFailure(UserError):
    """Parity failed: the message names the worst rows; the bundle was not written. Exit 1, as verify's."""

    exit_code = 1


@dataclass
class CardOptions:
    """What the model card says about the bundle beyond what the files tell."""

    name: str | None = None  # the title; default: the output folder's name
    license: str = DEFAULT_LICENSE
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    command: str | None = None  # the command that made the bundle, every option spelled out in one order
    tags: tuple[str, ...] = field(default=())

    def check(self) -> None:
        if not _LICENSE.fullmatch(self.license):
            raise UserError(f"--license {self.license!r} is not a license identifier; use one like apache-2.0, "
                            "mit or other")
        for language in self.languages:
            if not _LANGUAGE.fullmatch(language):
                raise UserError(f"--language {language!r} is not a language code; use ISO 639-1/3 codes like en "
                                "or sw, or multilingual")
        if self.name is not None and not self.name.strip():
            raise UserError("--name is empty; pass the title the model card should carry")


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
    card: CardOptions | None = None,
) -> BundleResult:
    card = card or CardOptions()
    card.check()
    check_tolerance(tolerance)
    if "tf2" in formats:  # before converting: bundle verifies every file it publishes
        require_tensorflow("verifying tf_model.h5 (bundle proves every file it publishes)",
                           "leave tf_model.h5 out with --format pytorch --format safetensors")
    if card.name is None:
        card = CardOptions(**{**card.__dict__, "name": _default_name(Path(output_dir))})
    parity: dict[str, ParityReport] = {}

    def verify_and_describe(staged: ConversionResult, progress: StepProgress) -> None:
        # The weight files were hashed as convert wrote them (hash_in_stream); the small files are hashed at the end.
        # verify drops each format from the page cache once proven, so that the next one reuses those pages
        # (bundle has just written them all: converters.writers.DirectFile says why new pages cost).
        report = verify_conversion(ckpt, staged.output_dir, original_config=options.config, heads=heads,
                                   tolerance=tolerance, progress=progress, release_cache=True)
        parity["report"] = report
        if not report.passed:
            worst = sorted(report.failures, key=severity, reverse=True)[:3]
            rows = [f"{r.head}/{r.format}/{r.output} max abs {r.max_abs:.2e} > {r.tolerance:.2e}" for r in worst]
            rows += [f"tensor {r.format}/{r.tensor} {r.check}" for r in report.tensor_failures[:3]]
            raise ParityFailure(f"parity failed on {len(report.failures)} of {len(report.rows)} outputs and "
                                f"{len(report.tensor_failures)} of {len(report.tensor_rows)} tensor checks "
                                f"({'; '.join(rows)}); nothing was written: run `convert-rembert verify` on a plain "
                                "conversion for the full table")
        report.write(staged.output_dir)
        write_checksums(staged.output_dir, staged.digests)  # before the card: it leaves the card out
        # After verify, not beside it: a 250,300-piece tokenizer in memory would add to verify's peak.
        with progress.step("tokenizer agreement"):
            tokenizer = _tokenizer_agreement(staged.output_dir)
        text = model_card(staged, report, card, tokenizer, folder=Path(output_dir).resolve().name)
        (staged.output_dir / MODEL_CARD_NAME).write_text(text, encoding="utf-8")

    # verify's imports (torch, TensorFlow: 2-3 s of one core) run while convert writes, which leaves a core idle,
    # instead of beside verify, which keeps both busy.
    # One set of progress lines for the whole bundle: convert's steps, then verify's.
    with terminal_progress(options.quiet) as progress, imports_ahead(list(formats)):
        conversion = convert_checkpoint(ckpt, output_dir, list(formats), options, hash_in_stream=True,
                                        before_commit=partial(verify_and_describe, progress=progress),
                                        progress=progress)
    out = Path(output_dir)
    return BundleResult(out, sorted(p for p in out.iterdir() if p.is_file()), parity["report"], conversion)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ignored_kinds(ignored: list[dict]) -> str:
    """' (96 optimizer-slot, 1 global-step)': how many variables each ignore rule took, from the report."""
    counts: dict[str, int] = {}
    for row in ignored:
        kind = str(row.get("reason", "")).split(":", 1)[0] or "other"
        counts[kind] = counts.get(kind, 0) + 1
    return f" ({', '.join(f'{n} {kind}' for kind, n in sorted(counts.items()))})" if counts else ""


def _default_name(output_dir: Path) -> str:
    """The output folder's name, as a hub repository would be named; 'RemBERT' for a nameless folder."""
    name = output_dir.resolve().name
    return name if name and not name.startswith(".") else "RemBERT"


def _checksummed(directory: Path) -> list[Path]:
    """Every file but the card (editable on a hub) and the checksum file itself."""
    return [p for p in sorted(directory.iterdir()) if p.is_file() and p.name not in (CHECKSUMS_NAME, MODEL_CARD_NAME)]


def write_checksums(directory: Path, known: dict[str, str] | None = None) -> Path:
    """`sha256sum -c SHA256SUMS` checks the folder: every file but the card and itself. `known`: digests by
    file name already computed (from the finished files, or from the bytes as the writer wrote them); the others
    are hashed here."""
    known = known or {}
    lines = [f"{known.get(p.name) or sha256_file(p)}  {p.name}" for p in _checksummed(directory)]
    path = directory / CHECKSUMS_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tokenizer_agreement(directory: Path):
    """The staged tokenizer.json measured against the staged sentencepiece.model, or None without one."""
    if not (directory / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    from converters.tokenizer import measure_agreement, probe_corpus, read_sentencepiece

    info = read_sentencepiece(directory / "sentencepiece.model")
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return info, measure_agreement(info, tokenizer, probe_corpus())


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rembert-convert")
    except PackageNotFoundError:  # run from a source tree without installing
        return "(source tree, not installed)"


def _yaml_list(key: str, values: list[str]) -> list[str]:
    # JSON strings are valid YAML double-quoted scalars: no value can break the front matter.
    return [f"{key}:"] + [f"- {json.dumps(v, ensure_ascii=False)}" for v in values]


TASK_PIPELINES = {  # a fine-tuned head's Auto class, pipeline tag and main output, by its --head kind
    "sequence-classification": ("AutoModelForSequenceClassification", "text-classification", "logits"),
    "token-classification": ("AutoModelForTokenClassification", "token-classification", "logits"),
    "question-answering": ("AutoModelForQuestionAnswering", "question-answering", "start_logits"),
}


def front_matter(card: CardOptions, mlm_head: bool, formats: list[str], task_kind: str | None = None) -> list[str]:
    """The YAML metadata a hub reads: license, language, library_name, pipeline_tag, tags."""
    pipeline_tag = TASK_PIPELINES[task_kind][1] if task_kind else "fill-mask" if mlm_head else "feature-extraction"
    tags = ["rembert", *(["safetensors"] if "safetensors" in formats else []),
            *(["pytorch"] if "pytorch" in formats else []), *(["tf"] if "tf2" in formats else []),
            "converted", "rembert-convert", *card.tags]
    return [
        "---",
        f"license: {json.dumps(card.license)}",
        *_yaml_list("language", list(card.languages)),
        "library_name: transformers",
        f"pipeline_tag: {pipeline_tag}",
        *_yaml_list("tags", list(dict.fromkeys(tags))),
        "---",
    ]


def model_card(staged: ConversionResult, parity: ParityReport, card: CardOptions, tokenizer=None,
               folder: str = ".") -> str:
    """A deterministic model card: what the folder holds, how it was made, what parity was measured, how to
    use and check it. `folder` is the bundle folder's name, which the usage snippets load."""
    report, config = staged.report, staged.plan.config
    files = sorted(p.name for p in staged.output_dir.iterdir() if p.is_file())
    formats = list(parity.formats)
    mlm_head = bool(report["mlm_head"])
    task_head = report.get("task_head")
    task_kind = task_head["kind"] if task_head else None
    act = ACTIVATION_MEANING[config.hidden_act]
    checkpoint = report["source"].get("saved_model") or Path(report["source"]["checkpoint"]).name
    if task_head:
        what = "regression" if task_head["problem_type"] == "regression" else f"{task_head['num_labels']} outputs"
        head_line = (f"- task head `{task_head['architecture']}` ({what}), from the checkpoint's "
                     f"`{'`, `'.join(task_head['variables'])}` ({task_head['origin']}); no masked-LM head")
    else:
        head_line = f"- masked-LM head {'included' if mlm_head else 'not included'}"
    lines = [
        *front_matter(card, mlm_head, formats, task_kind),
        "",
        f"# {card.name}",
        "",
        f"RemBERT ({config.num_hidden_layers} layers, hidden size {config.hidden_size}) converted from Google's "
        f"original TF1 checkpoint `{checkpoint}` by rembert-convert. Weight names follow Hugging Face "
        "transformers' RemBERT, so the files load with transformers' Auto classes.",
        "",
        "## Model",
        "",
        f"- {config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
        f"intermediate {config.intermediate_size}, {config.max_position_embeddings} positions",
        f"- vocabulary {config.vocab_size}, input embedding {config.input_embedding_size}"
        + ("" if task_head else f", output embedding {config.output_embedding_size}"),
        f"- activation `{config.hidden_act}`: {act}",
        f"- weights dtype {report['dtype']}",
        head_line,
        f"- {_count(len(report['mapped']), 'tensor')} converted; "
        f"{_count(len(report['ignored']), 'checkpoint variable')} ignored"
        f"{_ignored_kinds(report['ignored'])}: see `conversion_report.json`",
        "",
        *_usage(folder, formats, mlm_head, tokenizer is not None, config, task_kind,
                bleurt=bool(task_head) and BLEURT_CONFIG in task_head["decided_by"]),
        *_tokenizer_section(tokenizer),
        *_parity_section(parity),
        "## How it was made",
        "",
        f"rembert-convert {_tool_version()}:",
        "",
        "```bash",
        card.command or f"convert-rembert bundle {shlex.quote(str(checkpoint))} -o {shlex.quote(folder)}",
        "```",
        "",
        "## Files and how to check them",
        "",
        *[f"- `{name}`" for name in sorted(files + [MODEL_CARD_NAME])],
        "",
        f"`{CHECKSUMS_NAME}` lists the sha256 of every file but this card, so the card can be edited:",
        "",
        "```bash",
        f"cd {shlex.quote(folder)} && sha256sum -c {CHECKSUMS_NAME}",
        "```",
        "",
        "To measure parity again against the original checkpoint (`pip install rembert-convert`; add the `[tf]` "
        "extra to verify `tf_model.h5`):",
        "",
        "```bash",
        f"convert-rembert verify ORIGINAL_CHECKPOINT_DIR {shlex.quote(folder)}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _usage(folder: str, formats: list[str], mlm_head: bool, has_tokenizer: bool, config,
           task_kind: str | None = None, bleurt: bool = False) -> list[str]:
    lines = ["## Use", ""]
    path_line = f"path = {json.dumps(folder)}  # this folder, or its id once uploaded to a hub"
    torch_formats = [f for f in formats if f in ("pytorch", "safetensors")]
    auto = "AutoModelForMaskedLM" if mlm_head else "AutoModel"
    out = "logits" if mlm_head else "last_hidden_state"
    if task_kind is not None:
        auto, _, out = TASK_PIPELINES[task_kind]
    if has_tokenizer and task_kind == SEQUENCE_CLASSIFICATION:
        # A sentence pair, [CLS] a [SEP] b [SEP] with token types 0/1: what BLEURT (reference, candidate) and
        # run_classifier's pair tasks read; a single sentence gives a meaningless BLEURT score.
        pair = '"The cat sat on the mat.", "A cat was sitting on the mat."'
        comment = "  # (reference, candidate): BLEURT scores the pair" if bleurt else "  # a sentence pair"
        inputs_pt = f'inputs = tokenizer({pair}, return_tensors="pt"){comment}'
        inputs_tf = f'inputs = tokenizer({pair}, return_tensors="tf"){comment}'
    elif has_tokenizer:
        inputs_pt = 'inputs = tokenizer("Hello world", return_tensors="pt")'
        inputs_tf = 'inputs = tokenizer("Hello world", return_tensors="tf")'
    else:
        ids = [i % config.vocab_size for i in (5, 6, 7, 8)]  # any ids the vocabulary holds
        inputs_pt = f"inputs = {{\"input_ids\": torch.tensor([{ids}])}}"
        inputs_tf = f"inputs = {{\"input_ids\": tf.constant([{ids}])}}"
    if torch_formats:
        code = ["import torch"] if not has_tokenizer else []
        code += [f"from transformers import {auto}" + (", AutoTokenizer" if has_tokenizer else "")
                 + (", pipeline" if has_tokenizer and mlm_head else ""), "", path_line]
        if has_tokenizer and mlm_head:
            code += ["fill_mask = pipeline(\"fill-mask\", model=path)",
                     f"print(fill_mask({json.dumps(SAMPLE_TEXT)})[0])"]
        if has_tokenizer:
            code += ["tokenizer = AutoTokenizer.from_pretrained(path)"]
        code += [f"model = {auto}.from_pretrained(path)", inputs_pt, f"print(model(**inputs).{out}.shape)"]
        lines += [
            "PyTorch, with transformers 5 (the same code runs with 4.57"
            + ("; there, in an environment that also has TensorFlow with Keras 3 but no `tf-keras`, set `USE_TF=0` "
               "first, or `pipeline()` fails with \"Keras 3 is not yet supported\"" if has_tokenizer and mlm_head
               else "") + "):",
            "",
            "```bash",
            'pip install "transformers>=5" torch',
            "```",
            "",
            SNIPPET_MARK.format("pytorch"),
            "```python",
            *code,
            "```",
            "",
        ]
        if mlm_head and task_kind is None:
            lines += ["transformers lists `rembert.pooler.dense.*` as unexpected (5.x) or not used (4.57) when it "
                      "loads the masked-LM class: the files keep the original pooler for `AutoModel`, which uses "
                      "it.", ""]
    if "tf2" in formats:
        tf_auto = f"TF{auto}"
        # Workarounds for transformers 4.57 (each is checked by scripts/tf_interop_check.py):
        # - its TF from_pretrained prefers model.safetensors and then fails on it ('builtins.safe_open' object
        #   is not iterable); use_safetensors=False makes it read tf_model.h5;
        # - its pipeline() refers to torch for the default dtype ("auto") and fails where torch is absent.
        load = "use_safetensors=False" if "safetensors" in formats else ""
        code = ["import tensorflow as tf"] if not has_tokenizer else []
        code += [f"from transformers import {tf_auto}" + (", AutoTokenizer" if has_tokenizer else "")
                 + (", pipeline" if has_tokenizer and mlm_head else ""), "", path_line]
        if has_tokenizer and mlm_head:
            kwargs = ', model_kwargs={"use_safetensors": False}' if load else ""
            code += [f'fill_mask = pipeline("fill-mask", model=path, dtype=None{kwargs})',
                     f"print(fill_mask({json.dumps(SAMPLE_TEXT)})[0])"]
        if has_tokenizer:
            code += ["tokenizer = AutoTokenizer.from_pretrained(path)"]
        code += [f"model = {tf_auto}.from_pretrained(path{', ' + load if load else ''})", inputs_tf,
                 f"print(model(**inputs).{out}.shape)"]
        lines += [
            "TensorFlow, with transformers 4.57 (the last release with TF classes; they need Keras 2, which "
            "`tf-keras` provides):",
            "",
            "```bash",
            'pip install "transformers==4.57.*" tensorflow tf-keras',
            "```",
            "",
            SNIPPET_MARK.format("tensorflow"),
            "```python",
            *code,
            "```",
            "",
            "Workarounds this needs in transformers 4.57:",
            "",
        ]
        if load:
            lines += ["- `use_safetensors=False`: TF `from_pretrained` prefers `model.safetensors` over "
                      "`tf_model.h5` and fails on it with `'builtins.safe_open' object is not iterable` (seen "
                      "with safetensors 0.7 and 0.8)."]
        if has_tokenizer and mlm_head:
            lines += ["- `pipeline(..., dtype=None)`: without torch installed, `pipeline()` fails with "
                      "`NameError: name 'torch' is not defined` on its default dtype."]
        lines += [""]
    return lines


def _tokenizer_section(tokenizer) -> list[str]:
    if tokenizer is None:
        return []
    from converters.tokenizer import DIFFERENCE_SUMMARIES

    info, agreement = tokenizer
    lines = [
        "## Tokenizer",
        "",
        f"`tokenizer.json` is the SentencePiece model `sentencepiece.model` ({info.model_type}, "
        f"{len(info.pieces)} pieces) as a fast tokenizer; `AutoTokenizer` loads it as it is, in transformers 5 "
        "and 4.57. Its ids equal SentencePiece's on "
        f"{agreement.equal} of {agreement.total} lines of rembert-convert's multilingual probe corpus "
        f"({100 * agreement.rate:.1f}%).",
    ]
    if agreement.classes or agreement.unexplained:
        lines += ["", "The lines that differ, by cause:", ""]
        lines += [f"- {n} x `{name}`: {DIFFERENCE_SUMMARIES[name]}" for name, n in sorted(agreement.classes.items())]
        if agreement.unexplained:
            lines += [f"- {len(agreement.unexplained)} x unexplained"]
    lines += ["", "Where the two can differ at all (each with a reproducer): `DIFFERENCE_CLASSES` in "
              "rembert-convert's `converters/tokenizer.py`.", ""]
    return lines


def _parity_section(parity: ParityReport) -> list[str]:
    worst: dict[tuple[str, str], float] = {}
    for row in parity.rows:
        key = (row.head, row.format)
        worst[key] = max(worst.get(key, 0.0), row.rel_err)
    lines = [
        "## Parity",
        "",
        f"Every tensor of every format was compared with its checkpoint variable: {len(parity.tensor_rows)} "
        "checks, every value bit-identical to the source (cast to the weights' dtype).",
        "",
        f"Every head in every format was run on {parity.inputs['batch']} x {parity.inputs['seq']} tokens "
        f"({parity.inputs.get('description', '')}) and compared with a float64 forward pass of the original TF1 "
        f"graph: {len(parity.rows)} outputs, {'all within' if parity.passed else 'NOT all within'} tolerance "
        f"(atol {parity.tolerance['atol']:g} + rtol {parity.tolerance['rtol']:g} x scale"
        + (", overridden by the user" if parity.tolerance_override else "") + "). Task heads the checkpoint "
        "does not hold carry seeded weights in both. The largest relative error of any output, per head and "
        "format (`parity_report.md` names each one's output nearest its tolerance):",
        "",
        "| head | " + " | ".join(parity.formats) + " |",
        "| --- |" + " --- |" * len(parity.formats),
    ]
    for head in dict.fromkeys(r.head for r in parity.rows):
        cells = [f"{worst[(head, f)]:.1e}" if (head, f) in worst else "reference" for f in parity.formats]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    lines += ["", "Full table: `parity_report.md` / `parity_report.json`.", ""]
    return lines


def card_snippets(card_text: str) -> dict[str, str]:
    """The runnable code blocks of a model card, by name ("pytorch", "tensorflow"): what the interop checks
    run as written."""
    found = {}
    for name in SNIPPETS:
        mark = SNIPPET_MARK.format(name)
        if mark not in card_text:
            continue
        block = card_text.split(mark, 1)[1]
        match = re.match(r"\s*```python\n(.*?)\n```", block, re.S)
        if match:
            found[name] = match.group(1) + "\n"
    return found
