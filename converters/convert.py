"""The conversion driver: plan with the mapping table, read each tensor once, feed every requested writer.

Output goes to a temporary directory beside the target and is renamed into place only when every file is
complete; an existing non-empty output is replaced only with `force`. Nothing varies between runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rembert_ref.errors import UserError
from converters.mapping import (
    BLEURT_CONFIG,
    SEQUENCE_CLASSIFICATION,
    ConversionPlan,
    TaskHead,
    TensorMapping,
    VariableRow,
    apply_task_head,
    classify,
    find_task_head,
    plan_conversion,
    refuse_object_graph_checkpoint,
)
from converters.output import NamedInput, check_output, checkpoint_inputs, inputs_of, staged_output
from converters.pipeline import BufferPool, ScratchArray, read_ahead
from converters.progress import StepProgress, Update, terminal_progress
from converters.tf1_checkpoint import DEFAULT_CHUNK_BYTES, CheckpointReader, checkpoint_home, resolve_checkpoint
from converters.writers import (
    TARGET_DTYPES,
    SafetensorsWriter,
    TorchBinWriter,
    Writer,
    cast,
    parse_size,
    storage_dtype,
    torch_layout,
    transpose,
)
from rembert_ref.config import ACTIVATION_MEANING, ACTIVATION_TO_HF, RemBertConfig, read_json, is_original_config

FORMATS = ("pytorch", "safetensors", "tf2")
DEFAULT_MAX_SHARD_SIZE = "5GB"
REPORT_NAME = "conversion_report.json"
ORIGINAL_CONFIG_NAMES = ("bert_config.json", "config.json")
SENTENCEPIECE_NAMES = ("sentencepiece.model", "sent_piece.model")  # the second is BLEURT's


@dataclass
class ConvertOptions:
    config: str | os.PathLike | None = None  # bert_config.json (or a HF config.json); default: beside the ckpt
    dtype: str = "float32"
    mlm_head: bool = True
    activation: str | None = None  # "tanh" | "exact"; None: tanh for an original config, as-is for a HF one
    output_embedding_name: str | None = None
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE
    force: bool = False
    quiet: bool = False
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    checksums: bool = False  # sha256 of every file in the report: on 2 cores it costs more than the I/O
    tokenizer: str | os.PathLike | None = None  # a SentencePiece .model to convert into the same folder
    head: str | None = None  # --head: what an ambiguous task head reads (a HEAD_KINDS key)
    labels: str | os.PathLike | None = None  # --labels: a text file with one label name per line


@dataclass
class ConversionResult:
    output_dir: Path
    files: list[Path]
    plan: ConversionPlan
    report: dict = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # sha256 by file name, of files hashed as written


def find_config(prefix: Path, explicit: str | os.PathLike | None) -> Path:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise UserError(f"config file {path} {what}; pass the checkpoint's bert_config.json")
        return path
    home = checkpoint_home(prefix)
    for name in ORIGINAL_CONFIG_NAMES:
        if (home / name).is_file():
            return home / name
    raise UserError(f"no bert_config.json next to {prefix.name} (looked in {home}); pass the original config "
                    "with --config")


def find_sentencepiece(prefix: Path) -> Path | None:
    """The SentencePiece model beside a checkpoint or SavedModel, if any."""
    home = checkpoint_home(prefix)
    return next((home / name for name in SENTENCEPIECE_NAMES if (home / name).is_file()), None)


def choose_tokenizer(ckpt: str | os.PathLike, explicit: str | os.PathLike | None, disabled: bool) -> Path | None:
    """The SentencePiece model a conversion converts (`--tokenizer` / `--no-tokenizer`): the one given, else the
    one beside the checkpoint (None where there is none), none when disabled."""
    if explicit is not None and disabled:
        raise UserError("--tokenizer and --no-tokenizer contradict each other; pass one")
    if disabled:
        return None
    if explicit is None:
        return find_sentencepiece(resolve_checkpoint(ckpt))
    if not Path(explicit).is_file():
        raise UserError(f"tokenizer {explicit} does not exist; pass the checkpoint's sentencepiece.model")
    return Path(explicit)


def head_hint(prefix: Path) -> tuple[str, str] | None:
    """Evidence beside the checkpoint of what an ambiguous head reads: BLEURT's bleurt_config.json (BLEURT
    regresses on the pooled output)."""
    if (checkpoint_home(prefix) / BLEURT_CONFIG).is_file():
        return SEQUENCE_CLASSIFICATION, f"{BLEURT_CONFIG} beside the checkpoint (BLEURT scores the pooled output)"
    return None


def tokenizer_max_length(prefix: Path, config: RemBertConfig) -> tuple[int, str]:
    """The tokenizer's model_max_length and where it comes from: a BLEURT checkpoint's max_seq_length (BLEURT cuts
    every pair to it, so `truncation=True` must too), else the model's max_position_embeddings."""
    path = checkpoint_home(prefix) / BLEURT_CONFIG
    value = read_json(path).get("max_seq_length") if path.is_file() else None
    if value is None:
        return config.max_position_embeddings, "max_position_embeddings"
    if not isinstance(value, int) or isinstance(value, bool) or not 3 <= value <= config.max_position_embeddings:
        raise UserError(f"{path} has max_seq_length {value!r}; BLEURT needs a whole number from 3 to the model's "
                        f"max_position_embeddings ({config.max_position_embeddings}): correct it")
    return value, f"{BLEURT_CONFIG} max_seq_length"


def read_labels(path: str | os.PathLike) -> list[str]:
    """--labels FILE: one label per line, in output order (blank lines at the end are ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not a label
    except FileNotFoundError:
        raise UserError(f"labels file {path} does not exist; write one label per line") from None
    except UnicodeDecodeError:
        raise UserError(f"labels file {path} is not UTF-8 text; write one label per line") from None
    labels = [line.strip() for line in text.rstrip("\n").split("\n")]
    if not text.strip() or any(not label for label in labels):
        raise UserError(f"labels file {path} has an empty label; write one non-empty label per line")
    return labels


def detect_task_head(reader: CheckpointReader, options: ConvertOptions) -> TaskHead | None:
    """The checkpoint's task head (find_task_head), after refusing a TF2 object graph, whose names match nothing."""
    variables = reader.variables()
    refuse_object_graph_checkpoint(variables, str(checkpoint_home(reader.prefix)))
    return find_task_head(variables, options.head, hint=head_hint(reader.prefix))


def load_config(prefix: Path, options: ConvertOptions) -> RemBertConfig:
    path = find_config(prefix, options.config)
    values = read_json(path)
    if is_original_config(values):
        return RemBertConfig.from_original(values, activation=options.activation or "tanh")
    config = RemBertConfig.from_dict(values)
    if options.activation is not None:
        config.hidden_act = ACTIVATION_TO_HF[options.activation]
    elif config.hidden_act not in ACTIVATION_MEANING:
        # The original graph's activation is gelu; another one would give a model verify cannot prove.
        raise UserError(f"{path} has hidden_act {config.hidden_act!r}; the original RemBERT graph uses gelu: pass "
                        "--activation tanh (TF1 BERT's gelu, 'gelu_new') or --activation exact ('gelu')")
    return config


@dataclass
class InspectResult:
    """What `inspect` shows: every variable's fate, and each reason the conversion would fail."""

    checkpoint: str  # the prefix read
    num_shards: int
    rows: list[VariableRow]  # one per variable, and one per missing target
    config_note: str | None  # why no config could be loaded (the rows then have no shapes to check)
    output_embedding: str | None
    task_head: TaskHead | None
    head_problem: str | None
    tokenizer: Path | None  # the SentencePiece model convert would take
    tokenizer_problem: str | None
    ok: bool  # the conversion would succeed


def inspect_checkpoint(ckpt: str | os.PathLike, options: ConvertOptions | None = None) -> InspectResult:
    """Every variable with its shape, dtype and fate (mapped / ignored / error), plus what is missing."""
    options = options or ConvertOptions()
    reader = CheckpointReader(ckpt)
    try:
        config = load_config(reader.prefix, options)
    except UserError as exc:
        if options.config is not None:
            raise
        config, note = None, str(exc)
    else:
        note = None
    # Not a head problem: nothing in such a checkpoint can be matched, so it is refused outright.
    refuse_object_graph_checkpoint(reader.variables(), str(checkpoint_home(reader.prefix)))
    try:
        task_head, head_problem = detect_task_head(reader, options), None
    except UserError as exc:
        if options.head is not None:
            raise
        task_head, head_problem = None, str(exc)
    if config is not None and task_head is not None:
        config.num_labels = task_head.num_labels  # the head's shapes are checked against the checkpoint's
    if options.labels is not None and config is not None and head_problem is None:  # as convert checks them
        apply_task_head(dataclasses.replace(config, extra=dict(config.extra)), task_head,
                        read_labels(options.labels))
    rows, output_embedding = classify(config, reader.variables(), mlm_head=options.mlm_head,
                                      output_embedding_name=options.output_embedding_name, task_head=task_head,
                                      head_problem=head_problem)
    # The SentencePiece model convert would take (options.tokenizer: see choose_tokenizer), checked as convert does.
    spm = Path(options.tokenizer) if options.tokenizer is not None else None
    tokenizer_problem = None
    if spm is not None and config is not None:
        try:
            _read_tokenizer(spm, config)
            tokenizer_max_length(reader.prefix, config)  # BLEURT's max_seq_length, which convert checks too
        except UserError as exc:
            tokenizer_problem = str(exc)
    return InspectResult(
        checkpoint=str(reader.prefix), num_shards=reader.num_shards, rows=rows, config_note=note,
        output_embedding=output_embedding, task_head=task_head, head_problem=head_problem, tokenizer=spm,
        tokenizer_problem=tokenizer_problem,
        ok=config is not None and head_problem is None and tokenizer_problem is None
        and not any(r.status in ("missing", "error") for r in rows))


def _writer_factories(formats: Sequence[str], options: ConvertOptions,
                      hash_in_stream: bool = False) -> list[Callable[..., Writer]]:
    hashed = options.checksums or hash_in_stream  # each writer hashes its files as it writes them
    factories: list[Callable[..., Writer]] = []
    for name in formats:
        if name == "pytorch":
            factories.append(lambda d, m, t, plan: TorchBinWriter(d, m, t, checksums=hashed))
        elif name == "safetensors":
            max_shard = parse_size(str(options.max_shard_size), "--max-shard-size")
            factories.append(lambda d, m, t, plan, size=max_shard: SafetensorsWriter(d, m, t, size, hashed))
        elif name == "tf2":
            from converters.h5_writer import H5Writer  # h5py only when asked for

            factories.append(lambda d, m, t, plan: H5Writer(d, m, t, architecture=plan.architecture,
                                                             checksums=hashed))
    return factories


def convert_checkpoint(
    ckpt: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Sequence[str],
    options: ConvertOptions | None = None,
    *,
    before_commit: Callable[[ConversionResult], None] | None = None,
    hash_in_stream: bool = False,
    progress: StepProgress | None = None,
) -> ConversionResult:
    """Convert a TF1 RemBERT checkpoint into the requested formats (one pass over the checkpoint).

    `before_commit` sees the finished files in the staging directory and may add files or raise (then nothing
    is written): `bundle` verifies parity there, before the output appears. `hash_in_stream`: every weight file
    gets its sha256 in `ConversionResult.digests` even without `options.checksums` (each writer hashes its files
    as it writes them). `progress`: where the steps are shown (bundle shows its own steps on the same lines); by
    default on a terminal's stderr, unless `options.quiet`."""
    options = options or ConvertOptions()
    if progress is not None:
        return _convert(ckpt, output_dir, formats, options, before_commit, hash_in_stream, progress)
    with terminal_progress(options.quiet) as shown:
        return _convert(ckpt, output_dir, formats, options, before_commit, hash_in_stream, shown)


def _convert(ckpt: str | os.PathLike, output_dir: str | os.PathLike, formats: Sequence[str], options: ConvertOptions,
             before_commit: Callable[[ConversionResult], None] | None, hash_in_stream: bool,
             progress: StepProgress) -> ConversionResult:
    if options.dtype not in TARGET_DTYPES:
        raise UserError(f"unknown dtype {options.dtype!r}; use one of: {', '.join(TARGET_DTYPES)}")
    if options.activation is not None and options.activation not in ACTIVATION_TO_HF:
        raise UserError(f"unknown activation {options.activation!r}; use one of: {', '.join(ACTIVATION_TO_HF)}")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        what = f"unknown format(s) {', '.join(unknown)}" if unknown else "no format given"
        raise UserError(f"{what}; use some of: {', '.join(FORMATS)}")
    formats = [name for name in FORMATS if name in formats]  # one order, whatever the caller's
    check_dtype_formats(options.dtype, formats)
    # Everything that can fail without reading weights fails first: output location, config, shapes,
    # tokenizer size. Only then does the first byte of tensor data get read.
    prefix = resolve_checkpoint(ckpt)
    inputs = conversion_inputs(prefix, options, ckpt)
    check_output(output_dir, inputs, force=options.force)
    output_dir = Path(output_dir)
    factories = _writer_factories(formats, options, hash_in_stream)
    labels = read_labels(options.labels) if options.labels is not None else None
    with CheckpointReader(prefix) as reader:
        config = load_config(reader.prefix, options)
        task_head = detect_task_head(reader, options)
        apply_task_head(config, task_head, labels)
        plan = plan_conversion(config, reader.variables(), mlm_head=options.mlm_head,
                               output_embedding_name=options.output_embedding_name, task_head=task_head,
                               inspect_args=inspect_args(ckpt, options))
        spm_info = _read_tokenizer(Path(options.tokenizer), config) if options.tokenizer is not None else None
        max_length = tokenizer_max_length(reader.prefix, config) if spm_info is not None else None
        _set_special_ids(config, spm_info or _vocabulary_beside(reader.prefix, config))
        config.torch_dtype = options.dtype  # also under "dtype" where a transformers --config has that key
        config.architectures = [plan.architecture]
        with staged_output(output_dir, inputs, force=options.force) as staging:
            # The tokenizer first: the parsed SentencePiece model, 250,300 pieces as Python objects at full size, is
            # freed before the weights and `before_commit` need memory.
            tokenizer_files = []
            if spm_info is not None:
                with progress.step("tokenizer files"):
                    tokenizer_files = _write_tokenizer(spm_info, max_length[0], staging)
            del spm_info
            config.save(staging / "config.json")
            writers = [factory(staging, plan.mappings, options.dtype, plan) for factory in factories]
            try:
                with progress.step(f"convert to {' + '.join(formats)}") as update:
                    _stream(reader, plan.mappings, writers, options, update)
                    closed = [path for writer in writers for path in writer.close()]
            except BaseException:
                for writer in writers:
                    writer.abort()
                raise
            files = closed + tokenizer_files
            own = {path: digest for writer in writers for path, digest in writer.digests().items()}
            digests = None
            if options.checksums:  # the weights were hashed as they were written; the small files now
                digests = {**{path: sha256_file(path) for path in files if path not in own}, **own}
            hashed_as_written = {path.name: digest for path, digest in own.items()}
            del writers  # their buffers, before `before_commit` (bundle's verify) needs the memory
            report = conversion_report(reader.prefix, plan, options, formats, files, digests, max_length)
            (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            if before_commit is not None:
                before_commit(ConversionResult(staging, files + [staging / "config.json", staging / REPORT_NAME],
                                               plan, report, hashed_as_written))
    final_files = [output_dir / p.name for p in files] + [output_dir / "config.json", output_dir / REPORT_NAME]
    return ConversionResult(output_dir, final_files, plan, report, hashed_as_written)


def _read_tokenizer(spm_path: Path, config: RemBertConfig):
    """Parse the SentencePiece model and check its size against the config, before any weight is read."""
    from converters.tokenizer import read_sentencepiece

    info = read_sentencepiece(spm_path)
    if len(info.pieces) != config.vocab_size:
        raise UserError(f"{spm_path} has {len(info.pieces)} pieces but the model's vocab_size is {config.vocab_size}; "
                        "pass the checkpoint's own SentencePiece model, or leave the tokenizer out")
    return info


def _vocabulary_beside(prefix: Path, config: RemBertConfig):
    """The SentencePiece model beside the checkpoint when no tokenizer is converted, for its special ids alone;
    None where there is none, or it does not fit the model (such a conversion needs no tokenizer)."""
    path = find_sentencepiece(prefix)
    if path is None:
        return None
    try:
        return _read_tokenizer(path, config)
    except UserError:
        return None


def _set_special_ids(config: RemBertConfig, vocabulary) -> None:
    """config.json's pad/bos/eos ids from the model's SentencePiece vocabulary ([PAD], [CLS], [SEP]). Without
    one, RemBERT's defaults (0/312/313, the full-size model's ids) stay only where the vocabulary has them."""
    ids = vocabulary.special_ids if vocabulary is not None else {}
    for name, piece in (("pad_token_id", "[PAD]"), ("bos_token_id", "[CLS]"), ("eos_token_id", "[SEP]")):
        value = ids.get(piece, getattr(config, name))
        setattr(config, name, value if value is not None and 0 <= value < config.vocab_size else None)


def _write_tokenizer(info, model_max_length: int, staging: Path) -> list[Path]:
    from converters.tokenizer import tokenizer_files

    written = []
    for name, data in tokenizer_files(info, model_max_length=model_max_length).items():
        (staging / name).write_bytes(data)
        written.append(staging / name)
    return written


READ_AHEAD_SLICES = 2


def _stream(reader: CheckpointReader, mappings: Sequence[TensorMapping], writers: Sequence[Writer],
            options: ConvertOptions, progress: Update) -> None:
    total = max(sum(reader.entries[m.source].nbytes for m in mappings), 1)
    done = 0
    # Every slice is read into one of a few buffers allocated here, cast into one of a few more, and
    # transposed into two more (see converters/pipeline.py): memory stays bounded by design, whatever the model.
    # One slice being converted here, READ_AHEAD_SLICES queued, one being read: with that many buffers the
    # reader never waits for a buffer, only for room in the queue.
    largest = max((_slice_bytes(reader, m, options) for m in mappings), default=0)
    buffers = BufferPool(READ_AHEAD_SLICES + 2, largest)
    target = storage_dtype(options.dtype)
    cast_bytes = max((_slice_bytes(reader, m, options) // _source_itemsize(m) * target.itemsize
                      for m in mappings if m.source_dtype != options.dtype), default=0)
    cast_buffers = BufferPool(READ_AHEAD_SLICES + 2, cast_bytes)
    transposed_out, tf_out = ScratchArray(), ScratchArray()

    def read_and_cast() -> Iterator[tuple[TensorMapping, np.ndarray, int]]:
        """(mapping, slice in the target dtype, its size in the checkpoint), read, checked and cast in the
        read-ahead thread: the casts (float16's costs as much CPU as reading, checking and writing the slice)
        run on one core while this thread transposes and writes on the other."""
        for mapping, chunk in _slices(reader, mappings, options, buffers):
            if mapping.source_dtype == options.dtype:
                yield mapping, chunk, chunk.nbytes
                continue
            out = cast_buffers.take(chunk.size * target.itemsize).view(target).reshape(chunk.shape)
            converted = cast(chunk, mapping.source_dtype, options.dtype, out)
            buffers.give_back(chunk)
            yield mapping, converted, chunk.nbytes

    # With more than one format, each slice goes to the writers at once, one thread each: copying into the page
    # cache is system time, and pytorch_model.bin and tf_model.h5 each copy every byte (h5py and zlib's CRC-32
    # release the GIL). The slice's buffers are reused only when every writer is done with it.
    writing = ThreadPoolExecutor(max_workers=max(len(writers) - 1, 1), thread_name_prefix="write")
    try:
        # Reading, CRC checks and casts run a few slices ahead in a thread of their own (see
        # converters/pipeline.py); this thread transposes and writes the first format, the writing threads the
        # others (DirectFile's own thread does the safetensors I/O).
        layouts = {writer.layout for writer in writers}
        for mapping, converted, source_bytes in read_ahead(read_and_cast(), depth=READ_AHEAD_SLICES):
            out = tf_out.array(converted.shape[::-1], target) if mapping.tf_transpose else None
            arrays = {"tf": tf_layout(mapping, converted, out)}
            if "torch" in layouts:
                out = transposed_out.array(converted.shape[::-1], target) if mapping.transpose else None
                arrays["torch"] = torch_layout(mapping, converted, out)
            jobs = [writing.submit(writer.add, mapping, arrays[writer.layout]) for writer in writers[1:]]
            try:
                writers[0].add(mapping, arrays[writers[0].layout])
            finally:
                wait(jobs)  # even when this thread's writer failed: the others still read the slice
            for job in jobs:
                job.result()  # a writer's error, raised here
            (buffers if mapping.source_dtype == options.dtype else cast_buffers).give_back(converted)
            done += source_bytes
            progress(done / total)
    finally:
        writing.shutdown()


def tf_layout(mapping: TensorMapping, chunk: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Keras kernels are [in, out] like TF1's: only BERT's [out, in] output_weights (read whole) turn,
    into `out` (shape reversed) if given."""
    return transpose(chunk, out) if mapping.tf_transpose else chunk


def _source_itemsize(mapping: TensorMapping) -> int:
    return 2 if mapping.source_dtype == "bfloat16" else np.dtype(mapping.source_dtype).itemsize


def _slice_bytes(reader: CheckpointReader, mapping: TensorMapping, options: ConvertOptions) -> int:
    """The largest slice `_slices` reads of this tensor: all of a transposed kernel, else `chunk_bytes`
    worth of rows (at least one row, at most the whole tensor)."""
    entry = reader.entries[mapping.source]
    if mapping.read_whole:
        return entry.nbytes
    row_bytes = entry.nbytes // max(entry.shape[0], 1) if entry.shape else entry.nbytes
    return min(entry.nbytes, max(row_bytes, options.chunk_bytes // max(row_bytes, 1) * row_bytes))


def _slices(reader: CheckpointReader, mappings: Sequence[TensorMapping], options: ConvertOptions,
            buffers: BufferPool) -> Iterator[tuple[TensorMapping, np.ndarray]]:
    """(mapping, slice in the source dtype and layout, in a buffer of `buffers`) for every slice of every
    mapped tensor."""
    for mapping in mappings:
        limit = reader.entries[mapping.source].nbytes if mapping.read_whole else options.chunk_bytes
        for chunk in reader.iter_rows(mapping.source, max_bytes=max(limit, 1), buffers=buffers):
            yield mapping, chunk


def conversion_report(prefix: Path, plan: ConversionPlan, options: ConvertOptions, formats: Sequence[str],
                      files: Sequence[Path], digests: dict[Path, str] | None = None,
                      tokenizer_max_length: tuple[int, str] | None = None) -> dict:
    """What was converted, ignored and absent, and the files' sha256 (unless `options.checksums` is off):
    deterministic, no timestamps."""
    return {
        "source": {"checkpoint": prefix.name, "output_embedding": plan.output_embedding,
                   **({"saved_model": checkpoint_home(prefix).name} if checkpoint_home(prefix) != prefix.parent
                      else {})},
        "activation": {"hidden_act": plan.config.hidden_act, "meaning": ACTIVATION_MEANING[plan.config.hidden_act]},
        "dtype": options.dtype,
        "mlm_head": plan.mlm_head,
        "task_head": None if plan.task_head is None else {
            "architecture": plan.task_head.architecture, "kind": plan.task_head.kind,
            "rule": plan.task_head.rule.name, "origin": plan.task_head.rule.origin,
            "variables": [plan.task_head.rule.kernel, plan.task_head.rule.bias],
            "num_labels": plan.task_head.num_labels, "problem_type": plan.task_head.problem_type,
            "decided_by": plan.task_head.decided_by},
        "formats": list(formats),
        "tokenizer": None if tokenizer_max_length is None else {
            "model_max_length": tokenizer_max_length[0], "model_max_length_from": tokenizer_max_length[1]},
        "mapped": [{"source": m.source, "target": m.torch_name, "tf_target": m.tf_name,
                    "shape": list(m.source_shape), "source_dtype": m.source_dtype, "transposed": m.transpose,
                    **({"tf_transposed": True} if m.tf_transpose else {})}
                   for m in plan.mappings],
        "ignored": [{"source": r.variable, "shape": list(r.shape), "reason": r.detail} for r in plan.ignored],
        "absent_by_design": [r.detail for r in plan.absent_by_design],
        "files": {p.name: {"bytes": p.stat().st_size,
                           **({"sha256": (digests or {}).get(p) or sha256_file(p)} if options.checksums else {})}
                  for p in files},
    }


def sha256_file(path: Path, block: int = 16 << 20) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(block)  # one buffer for the whole file: no 16 MB allocation per read
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


# -- inputs and combinations checked before anything is read ----------------------------------------------


def inspect_args(ckpt: str | os.PathLike, options: ConvertOptions) -> list[str]:
    """The arguments of the `inspect` command that shows this conversion's full table."""
    args = [str(ckpt)]
    if options.config is not None:
        args += ["--config", str(options.config)]
    if not options.mlm_head:
        args.append("--no-mlm-head")
    if options.output_embedding_name is not None:
        args += ["--output-embedding-name", options.output_embedding_name]
    if options.head is not None:
        args += ["--head", options.head]
    return args


def check_dtype_formats(dtype: str, formats: Sequence[str]) -> None:
    """HDF5 has no bfloat16: refuse the combination before reading anything, naming the way out."""
    if dtype == "bfloat16" and "tf2" in formats:
        others = [f for f in formats if f != "tf2"] or ["pytorch", "safetensors"]
        way_out = " ".join(f"--format {f}" for f in others)
        raise UserError(f"tf_model.h5 cannot hold bfloat16 (HDF5 has no such type): for bfloat16 pass {way_out}; "
                        "for tf2 use --dtype float32 or float16")


def conversion_inputs(prefix: Path, options: ConvertOptions, named: str | os.PathLike | None = None
                      ) -> list[NamedInput]:
    """Every file and folder a conversion reads (`named`: the checkpoint as the user gave it): no output may be,
    hold or lie inside one of them."""
    config = find_config(prefix, options.config)
    return checkpoint_inputs(prefix, named) + inputs_of([(config, "config file"),
                                                  (options.tokenizer, "SentencePiece model"),
                                                  (options.labels, "labels file")])
