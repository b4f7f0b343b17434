"""`convert-rembert`: thin Click commands over the library functions in `converters/`.

Each command parses options, calls one library function and formats its result. User mistakes raise
`UserError`, printed as one line without a traceback (unless --debug), with a non-zero exit code.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import click

from rembert_ref.errors import UserError

# Exit codes (the README's table lists the same): 0 success; 1 verify or bundle measured a parity failure;
# 2 a user error (bad input or options: one line, nothing written); 3 an internal error (a bug: one line,
# --debug shows the traceback); 128 + N when signal N (SIGHUP 129, SIGINT 130, SIGTERM 143) stopped a write.
EXIT_PARITY_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_SIGINT = 128 + 2
EXIT_SIGPIPE = 128 + 13  # as a command stopped by SIGPIPE, which a shell pipeline expects
OWN_PACKAGES = ("converters", "rembert_ref", "validation", "rembert_convert")


def _interrupted(exc: BaseException) -> None:
    from converters.output import Interrupted, pending_redelivery

    pending_redelivery()  # this interrupt is being reported: a copy set aside must not arrive during the exit

    if isinstance(exc, Interrupted):
        click.echo(f"error: {exc.message()}", err=True)
        sys.exit(exc.exit_code)
    click.echo("error: interrupted by SIGINT", err=True)
    sys.exit(EXIT_SIGINT)


def handle_user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print UserError (and unexpected errors) as one line; show the traceback only with --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from converters.output import Interrupted

        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            if debug:  # the traceback, then the same line and exit code as without --debug
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (Interrupted, KeyboardInterrupt) as exc:
            _interrupted(exc)
        except BrokenPipeError:  # stdout's reader left (`| head`): it read what it wanted; not a bug, no error line
            if debug:
                traceback.print_exc()
            _stdout_gone()
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # an internal error: still one line, the traceback is one flag away
            if debug:  # the traceback, then the same exit code as without --debug (never Python's 1)
                traceback.print_exc()
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing and missing.split(".")[0] not in OWN_PACKAGES:  # the install's doing (ours missing: a bug)
                click.echo(f"error: the Python module {missing!r} is not installed; install rembert-convert with "
                           "its dependencies (pip install rembert-convert, or pip install -e . in a checkout)",
                           err=True)
                sys.exit(EXIT_USER_ERROR)
            where = _file_system_refusal(exc)
            if where is not None:  # the disk's or a permission's doing, not a bug: the staged output is removed
                click.echo(f"error: {where}", err=True)
                sys.exit(EXIT_USER_ERROR)
            hint = "" if debug else " (rerun with --debug for the traceback)"
            click.echo(f"error: internal error {type(exc).__name__}: {exc}{hint}", err=True)
            sys.exit(EXIT_INTERNAL_ERROR)

    return wrapper


def _stdout_gone() -> None:
    """Exit as a command stopped by SIGPIPE would, pointing stdout at the null device first so that
    the interpreter's final flush finds no closed pipe to complain about."""
    try:
        descriptor = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # a stdout without a descriptor (a test runner's), or no fd left
        sys.exit(EXIT_SIGPIPE)
    try:
        os.dup2(null, descriptor)
    except OSError:
        pass
    finally:
        os.close(null)
    sys.exit(EXIT_SIGPIPE)


_REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM}


def _file_system_refusal(exc: Exception) -> str | None:
    """The message for a read or write the file system refused (full, read-only, no permission), or None."""
    from converters.output import OUTPUT_FULL_ERRNOS

    if not isinstance(exc, OSError) or exc.errno not in OUTPUT_FULL_ERRNOS | _REFUSED:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in OUTPUT_FULL_ERRNOS:
        step = "free space there or choose another output location"
    elif exc.errno == errno.EROFS:
        step = "choose an output location on a writable file system"
    else:
        step = "check its permissions (inputs must be readable, outputs writable)"
    return f"{where}{exc.strerror}; {step}"


NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # Click >= 8.2


class OneLineErrorGroup(click.Group):
    """Click's own usage errors get the same one-line `error: ` form as ours (Click prints a usage block and
    `Error:`); the exit code stays Click's (2)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        from converters.output import interrupt_outside_imports, occupy_closed_standard_descriptors, pending_redelivery

        occupy_closed_standard_descriptors()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, interrupt_outside_imports)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            if pending_redelivery() is not None:  # a Ctrl-C set aside in an import, and the command ended first
                raise KeyboardInterrupt
        except click.ClickException as exc:
            if isinstance(exc, NO_ARGS_IS_HELP):  # no command given: the help, as Click shows it
                exc.show()
                sys.exit(exc.exit_code)
            context = getattr(exc, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt) as exc:
            _interrupted(exc)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # while a command's options are parsed: Click would print a blank line
            raise click.Abort() from exc


debug_option = click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress lines, only errors.")
force_option = click.option("--force", is_flag=True, help="Replace an existing output directory.")


@click.group(name="convert-rembert", cls=OneLineErrorGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rembert-convert")
def main() -> None:
    """Convert Google's original RemBERT TF1 checkpoints to PyTorch, safetensors and TF2, and the
    SentencePiece model to a fast tokenizer, with measured parity.

    \b
    Example:
      convert-rembert inspect examples/tiny-rembert/model.ckpt-3
      convert-rembert safetensors examples/tiny-rembert -o out/tiny-rembert
    """


# -- checkpoint conversion --------------------------------------------------------------------------------


def checkpoint_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every checkpoint command shares."""
    for option in reversed([
        click.option("--config", "config", type=click.Path(dir_okay=False),
                     help="Original bert_config.json (default: bert_config.json beside the checkpoint)."),
        click.option("--activation", type=click.Choice(["tanh", "exact"]), default=None,
                     help="gelu form: tanh approximation as in TF1 BERT (default, hidden_act 'gelu_new') "
                          "or exact erf ('gelu')."),
        click.option("--no-mlm-head", "no_mlm_head", is_flag=True,
                     help="Write the bare RemBertModel layout, without the masked-LM head."),
        click.option("--output-embedding-name", default=None,
                     help="Name of the decoupled output embedding variable, if not */output_embedding(s)."),
        click.option("--head", "head", type=click.Choice(["sequence-classification", "token-classification",
                                                          "question-answering"]), default=None,
                     help="What a fine-tuned task head reads where its names do not say (dense/*, "
                          "output_weights): the pooled output (sequence-classification) or every token."),
        click.option("--labels", "labels", type=click.Path(dir_okay=False), default=None,
                     help="Text file with one label name per task-head output (default LABEL_0, LABEL_1, ...)."),
        debug_option,
    ]):
        command = option(command)
    return command


def tokenizer_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--tokenizer / --no-tokenizer, for the commands that convert (or, for inspect, check) a tokenizer."""
    for option in reversed([
        click.option("--tokenizer", "tokenizer", type=click.Path(dir_okay=False), default=None,
                     help="SentencePiece model to convert too (default: sentencepiece.model or BLEURT's "
                          "sent_piece.model beside the checkpoint)."),
        click.option("--no-tokenizer", is_flag=True, help="Leave the tokenizer out."),
    ]):
        command = option(command)
    return command


def _choose_tokenizer(ckpt: str, kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
    """The SentencePiece model to convert, and a note for the end of the output where none was found (a user
    who expected one must hear of it)."""
    from converters.convert import SENTENCEPIECE_NAMES, choose_tokenizer

    disabled = kwargs.pop("no_tokenizer")
    chosen = choose_tokenizer(ckpt, kwargs.pop("tokenizer"), disabled)
    note = None
    if chosen is None and not disabled:
        note = (f"note: no {' or '.join(SENTENCEPIECE_NAMES)} beside the checkpoint, so no tokenizer; pass "
                "--tokenizer FILE, or --no-tokenizer to leave it out without this note")
    return (None if chosen is None else str(chosen)), note


# The library's choices, spelled here so that `--help` imports no numpy; tests/test_cli.py keeps them equal to
# converters' FORMATS, DEFAULT_MAX_SHARD_SIZE, TARGET_DTYPES, H5_DTYPES and DEFAULT_MODEL_MAX_LENGTH.
FORMATS = ("pytorch", "safetensors", "tf2")
DEFAULT_MAX_SHARD_SIZE = "5GB"
ALL_DTYPES = ("float32", "float16", "bfloat16")
TF2_DTYPES = ("float32", "float16")  # HDF5 has no bfloat16: not offered, so refused while parsing
DEFAULT_MODEL_MAX_LENGTH = 512


def writer_options(command: Callable[..., Any], dtypes: tuple[str, ...] = ALL_DTYPES) -> Callable[..., Any]:
    for option in reversed([
        click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
                     help="Output directory (written atomically)."),
        click.option("--dtype", type=click.Choice(list(dtypes)), default="float32",
                     show_default=True, help="Weight dtype of the written files."
                     + ("" if "bfloat16" in dtypes else " (HDF5 has no bfloat16)")),
        force_option,
        quiet_option,
        click.option("--checksums", "checksums", is_flag=True,
                     help="Add each file's sha256 to conversion_report.json (off by default: hashing 4 GB costs "
                          "more CPU than converting it; bundle always writes SHA256SUMS)."),
    ]):
        command = option(command)
    return command


def _options(kwargs: dict[str, Any], **extra: Any):
    from converters.convert import ConvertOptions

    return ConvertOptions(config=kwargs.get("config"), dtype=kwargs.get("dtype", "float32"),
                          mlm_head=not kwargs.get("no_mlm_head", False), activation=kwargs.get("activation"),
                          output_embedding_name=kwargs.get("output_embedding_name"),
                          force=kwargs.get("force", False), quiet=kwargs.get("quiet", False),
                          checksums=kwargs.get("checksums", False), head=kwargs.get("head"),
                          labels=kwargs.get("labels"), **extra)


def say_checkpoint(ckpt: str, quiet: bool) -> None:
    """Name the checkpoint prefix that was read: a directory's `checkpoint` file may pick one silently."""
    from converters.tf1_checkpoint import resolve_checkpoint_saying_how

    if not quiet:
        prefix, how = resolve_checkpoint_saying_how(ckpt)
        click.echo(f"read checkpoint {prefix}" + (f" ({how})" if how else ""))


def _run_conversion(ckpt: str, formats: list[str], kwargs: dict[str, Any], **extra: Any) -> None:
    from converters.convert import convert_checkpoint

    result = convert_checkpoint(ckpt, kwargs["output"], formats, _options(kwargs, **extra))
    say_checkpoint(ckpt, kwargs.get("quiet", False))
    if kwargs.get("quiet"):
        return
    from rembert_ref.config import ACTIVATION_MEANING

    plan = result.plan
    act = plan.config.hidden_act
    click.echo(f"converted {len(plan.mappings)} tensors ({sum(1 for m in plan.mappings if m.part == 'mlm')} "
               f"in the MLM head), ignored {len(plan.ignored)}, activation {act} "
               f"({ACTIVATION_MEANING[act]}), dtype {result.report['dtype']}")
    for row in plan.absent_by_design:
        click.echo(f"absent by design: {row.detail}")
    if plan.task_head is not None:
        click.echo(f"task head: {plan.task_head.describe()}")
    if result.report["tokenizer"] is not None:
        tokenizer = result.report["tokenizer"]
        click.echo(f"tokenizer: model_max_length {tokenizer['model_max_length']} (the checkpoint's "
                   f"{tokenizer['model_max_length_from']})")
    for path in result.files:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("ckpt", type=click.Path())
@checkpoint_options
@click.option("--all", "show_all", is_flag=True, help="Also list each ignored variable (optimizer slots).")
@tokenizer_options
@handle_user_errors
def inspect(ckpt: str, show_all: bool, **kwargs: Any) -> None:
    """Show every variable of CKPT: shape, dtype, the rule that maps it or why it is ignored, and what is
    missing. Writes nothing; exits non-zero if the conversion would fail.

    CKPT is a checkpoint prefix, its .index file, a directory with a `checkpoint` file, or a TF1 SavedModel
    directory (its variables/variables).

    \b
    Example:
      convert-rembert inspect examples/tiny-rembert
      convert-rembert inspect examples/tiny-bleurt
      convert-rembert inspect gs-download/model.ckpt-1000 --config bert_config.json --all
    """
    from converters.convert import inspect_checkpoint

    tokenizer, no_tokenizer_note = _choose_tokenizer(ckpt, kwargs)
    info = inspect_checkpoint(ckpt, _options(kwargs, tokenizer=tokenizer))
    rows = info.rows
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    width = max((len(r.variable) for r in rows), default=10)
    for row in rows:
        if row.status == "ignored" and not show_all and "optimizer" in row.detail:
            continue
        shape = "[" + ",".join(map(str, row.shape)) + "]"
        click.echo(f"{row.status:8} {row.variable:{width}} {shape:16} {row.dtype:9} {row.detail}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    click.echo(f"{info.checkpoint}: {info.num_shards} data shard(s); {summary}"
               + ("" if show_all else " (optimizer slots hidden; --all lists them)"))
    if info.config_note:
        click.echo(f"note: {info.config_note}")
    if info.task_head is not None:
        click.echo(f"task head: {info.task_head.describe()}")
    elif info.head_problem is not None:
        click.echo(f"task head: {info.head_problem}")
    if info.tokenizer_problem is not None:
        click.echo(f"tokenizer: {info.tokenizer_problem} (or convert with --no-tokenizer)")
    elif info.tokenizer is not None and info.config_note is not None:
        click.echo(f"tokenizer: {info.tokenizer} (not checked: no usable config to check it against; see the note "
                   "above)")
    elif info.tokenizer is not None:
        click.echo(f"tokenizer: {info.tokenizer} (its pieces match vocab_size)")
    elif no_tokenizer_note is not None:
        click.echo(no_tokenizer_note)
    if not info.ok:
        raise UserError("this checkpoint would not convert: see the 'error'/'missing' rows and notes above")


max_shard_size_option = click.option("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, show_default=True,
                                     help="Split into model-0000K-of-0000N.safetensors + index above this size.")


# The single-format commands differ only in their format, help text and extra options: one table, one factory.
SINGLE_FORMAT_COMMANDS: dict[str, tuple[str, list[Callable[..., Any]]]] = {
    "pytorch": ("""Convert CKPT to pytorch_model.bin + config.json (+ conversion_report.json).

    \b
    Example:
      convert-rembert pytorch examples/tiny-rembert -o out/tiny-rembert-pt
      convert-rembert pytorch ckpt/model.ckpt-1000 --config bert_config.json -o out/pt --dtype bfloat16
    """, []),
    "safetensors": ("""Convert CKPT to model.safetensors (metadata {"format": "pt"}; sharded with
    model.safetensors.index.json above --max-shard-size) + config.json.

    \b
    Example:
      convert-rembert safetensors examples/tiny-rembert -o out/tiny-rembert-st
      convert-rembert safetensors ckpt/ -o out/st --max-shard-size 2GB --dtype float16
    """, [max_shard_size_option]),
    "tf2": ("""Convert CKPT to tf_model.h5 (Hugging Face's Keras layout: loads with transformers' TFRemBert* classes
    and rembert_ref.tf_model) + config.json. HDF5 has no bfloat16: use float32 or float16.

    \b
    Example:
      convert-rembert tf2 examples/tiny-rembert -o out/tiny-rembert-tf
      convert-rembert tf2 ckpt/model.ckpt-1000 --config bert_config.json -o out/tf --dtype float16
    """, []),
}


def _add_single_format_command(fmt: str, doc: str, extra_options: list[Callable[..., Any]]) -> None:
    def command(ckpt: str, **kwargs: Any) -> None:
        extra = {"max_shard_size": kwargs.pop("max_shard_size")} if "max_shard_size" in kwargs else {}
        _run_conversion(ckpt, [fmt], kwargs, **extra)

    command.__name__ = command.__qualname__ = fmt
    command.__doc__ = doc
    # Applied bottom-up, so the help lists: CKPT, writer options, the extras, checkpoint options.
    decorated = checkpoint_options(handle_user_errors(command))
    for option in reversed(extra_options):
        decorated = option(decorated)
    dtypes = TF2_DTYPES if fmt == "tf2" else ALL_DTYPES
    decorated = click.argument("ckpt", type=click.Path())(writer_options(decorated, dtypes))
    main.command(name=fmt)(decorated)


for _fmt, (_doc, _extra_options) in SINGLE_FORMAT_COMMANDS.items():
    _add_single_format_command(_fmt, _doc, _extra_options)


@main.command()
@click.argument("ckpt", type=click.Path())
@writer_options
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              help="Formats to write (repeatable; default: all three), in one pass over the checkpoint.")
@tokenizer_options
@click.option("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, show_default=True,
              help="Split model.safetensors into shards + index above this size.")
@checkpoint_options
@handle_user_errors
def convert(ckpt: str, formats: tuple[str, ...], max_shard_size: str, **kwargs: Any) -> None:
    """Convert CKPT to every format at once: pytorch_model.bin, model.safetensors, tf_model.h5, the
    tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json, sentencepiece.model),
    config.json and conversion_report.json, reading the checkpoint once.

    \b
    Example:
      convert-rembert convert examples/tiny-rembert -o out/tiny-rembert
      convert-rembert convert ckpt/ --config bert_config.json --tokenizer sentencepiece.model -o out/rembert
    """
    tokenizer, no_tokenizer_note = _choose_tokenizer(ckpt, kwargs)
    _run_conversion(ckpt, list(formats or FORMATS), kwargs,
                    max_shard_size=max_shard_size, tokenizer=tokenizer)
    if no_tokenizer_note is not None and not kwargs.get("quiet"):
        click.echo(no_tokenizer_note)


# -- tokenizer ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("spm", type=click.Path())
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="Output directory (written atomically).")
@click.option("--model-max-length", type=click.IntRange(min=1), default=DEFAULT_MODEL_MAX_LENGTH, show_default=True,
              help="tokenizer_config.json's model_max_length: the model's max_position_embeddings (RemBERT: "
                   "512; convert and bundle take it from the config).")
@force_option
@quiet_option
@debug_option
@handle_user_errors
def tokenizer(spm: str, output: str, model_max_length: int, force: bool, quiet: bool, debug: bool) -> None:
    """Convert the SentencePiece model SPM to a fast tokenizer: tokenizer.json (same ids as SentencePiece),
    tokenizer_config.json, special_tokens_map.json and a copy as sentencepiece.model. Prints the measured
    agreement with SentencePiece on the project's multilingual probe corpus.

    \b
    Example:
      convert-rembert tokenizer examples/tiny-rembert/sentencepiece.model -o out/tiny-rembert-tok
    """
    from converters.tokenizer import convert_tokenizer

    report = convert_tokenizer(spm, output, force=force, model_max_length=model_max_length)
    if not quiet:
        click.echo(report.summary())


# -- parity and publishing -----------------------------------------------------------------------------------


@main.command()
@click.argument("ckpt", type=click.Path())
@click.argument("converted", type=click.Path(file_okay=False))
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Original bert_config.json (default: beside the checkpoint).")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              help="Check only these formats (repeatable; default: every format in CONVERTED).")
@click.option("--tolerance", type=float, default=None,
              help="Override the per-dtype tolerance (atol = rtol = this); recorded in the report.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write parity_report.json and parity_report.md into this directory (written atomically; "
                   "a non-empty one only with --force; never inside an input).")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False), default=None,
              help="Write JUnit XML here: one test case per row, failures carry the figures (for CI; an "
                   "existing file only with --force).")
@click.option("--all-rows", is_flag=True, help="Print every functional row, not only the worst per head and format.")
@click.option("--force", is_flag=True, help="Replace an existing --report directory or --junit file.")
@click.option("--quiet", "-q", is_flag=True, help="No rows or progress: only the verdict and failing checks.")
@debug_option
@handle_user_errors
def verify(ckpt: str, converted: str, config: str | None, formats: tuple[str, ...], tolerance: float | None,
           report_dir: str | None, junit_file: str | None, all_rows: bool, force: bool, quiet: bool,
           debug: bool) -> None:
    """Prove CONVERTED (a folder written by convert-rembert) against the original checkpoint CKPT, twice:
    every tensor of every format bit for bit against its source variable (cast-exact for float16/bfloat16),
    and every head in every format against a float64 run of the original TF1 graph on the original names.
    Exit 0: parity holds; 1: parity fails (the summary names the worst row per head and format and every
    failing tensor); 2: bad input.

    \b
    Example:
      convert-rembert verify examples/tiny-rembert out/tiny-rembert
      convert-rembert verify ckpt/ out/rembert --report out/parity --junit out/verify.xml
      convert-rembert verify ckpt/ out/rembert --format safetensors --tolerance 1e-4
    """
    from validation.parity import verify_to_files
    from converters.progress import terminal_progress

    with terminal_progress(quiet) as progress:
        report, written = verify_to_files(ckpt, converted, original_config=config, formats=formats or None,
                                          tolerance=tolerance, report_dir=report_dir, junit_file=junit_file,
                                          force=force, progress=progress)
    shown = report.rows if all_rows else report.worst_rows()
    if not quiet:
        for row in shown:
            click.echo(f"{'ok  ' if row.passed else 'FAIL'} {row.head:34} {row.format:11} {row.output:20} "
                       f"max abs {row.max_abs:.2e}  rel {row.rel_err:.2e}  tol {row.tolerance:.2e}")
    for row in report.tensor_failures:
        click.echo(f"FAIL {row.subject:18} {row.tensor} ({row.check}; source {row.source}): {row.detail}")
    if not quiet:
        for path in written:
            click.echo(f"wrote {path}")
    verdict = "passed" if report.passed else "FAILED"
    click.echo(f"parity {verdict}: tensor checks {len(report.tensor_rows) - len(report.tensor_failures)}/"
               f"{len(report.tensor_rows)} pass, outputs {len(report.rows) - len(report.failures)}/"
               f"{len(report.rows)} within tolerance (weights {report.dtype}, {', '.join(report.formats)})")
    if not report.passed:
        sys.exit(EXIT_PARITY_FAILURE)


def _command_line(ctx: click.Context) -> str:
    """The command as a user would type it to get the same result: arguments, then every option whose value
    is not the default (what Click parsed, so it is the same however the options were spelled)."""
    import shlex

    words = ["convert-rembert", ctx.info_name or ctx.command.name or ""]
    options = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif value not in (None, False, ()) and value != param.default and param.name not in ("debug",):
            flag = param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0]
            for item in value if isinstance(value, tuple) else [value]:
                options += [flag] if item is True else [flag, str(item)]
    return shlex.join(words + options)


@main.command()
@click.argument("ckpt", type=click.Path())
@writer_options
@tokenizer_options
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              help="Formats to publish (repeatable; default: all three; bfloat16 needs pytorch/safetensors only).")
@click.option("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, show_default=True,
              help="Split model.safetensors into shards + index above this size.")
@click.option("--tolerance", type=float, default=None,
              help="Override the per-dtype parity tolerance; recorded in the report and the model card.")
@click.option("--name", default=None, help="Title of the model card (default: the output folder's name).")
@click.option("--license", "license_id", default="apache-2.0", show_default=True,
              help="License identifier for the model card's metadata (RemBERT's is apache-2.0).")
@click.option("--language", "languages", multiple=True,
              help="Language code for the model card's metadata (repeatable; default: multilingual).")
@checkpoint_options
@handle_user_errors
def bundle(ckpt: str, formats: tuple[str, ...], max_shard_size: str, tolerance: float | None, name: str | None,
           license_id: str, languages: tuple[str, ...], **kwargs: Any) -> None:
    """Write a publishable folder: pytorch_model.bin, model.safetensors, tf_model.h5, tokenizer files,
    config.json, conversion_report.json, parity_report.{json,md}, a model card (README.md) and SHA256SUMS.
    Parity is measured on the staged files; if it fails, nothing is written and the exit code is non-zero.
    The model card carries hub metadata (--license, --language, --name), usage, parity, tokenizer agreement
    and the command that made it; SHA256SUMS covers every file but the card. Hubs prefer safetensors: leave
    pytorch_model.bin out with --format safetensors --format tf2.

    \b
    Example:
      convert-rembert bundle examples/tiny-rembert -o out/tiny-rembert-bundle
      convert-rembert bundle ckpt/ --config bert_config.json --tokenizer sentencepiece.model -o publish/rembert
      convert-rembert bundle ckpt/ -o publish/rembert --format safetensors --format tf2 --language en --language sw
      convert-rembert bundle ckpt/ -o publish/rembert-bf16 --dtype bfloat16 --format safetensors
    """
    from validation.bundle import DEFAULT_LANGUAGES, CardOptions, bundle_checkpoint

    tokenizer, no_tokenizer_note = _choose_tokenizer(ckpt, kwargs)
    card = CardOptions(name=name, license=license_id, languages=languages or DEFAULT_LANGUAGES,
                       command=_command_line(click.get_current_context()))
    result = bundle_checkpoint(ckpt, kwargs["output"], _options(kwargs, max_shard_size=max_shard_size,
                                                                tokenizer=tokenizer),
                               formats=formats or FORMATS, tolerance=tolerance,
                               card=card)
    say_checkpoint(ckpt, kwargs.get("quiet", False))
    if not kwargs.get("quiet"):
        parity = result.parity
        click.echo(f"parity passed: {len(parity.tensor_rows)} tensor checks exact, {len(parity.rows)} outputs "
                   f"within tolerance (worst relative error {max((r.rel_err for r in parity.rows), default=0):.1e})")
        for path in result.files:
            click.echo(f"wrote {path}")
        if no_tokenizer_note is not None:
            click.echo(no_tokenizer_note)


if __name__ == "__main__":
    main()
