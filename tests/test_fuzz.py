"""Bad bytes never crash (issue 9): hypothesis mutates the shipped example's `.index`, data shard,
bert_config.json and SentencePiece model (truncation, bit flips, random bytes, and, with valid checksums,
any declared dtype, shape, shard, offset or size; any config value), then runs `convert`.

Each case must end in exit 0 with the unchanged example's weights, or in exit 2 with one line `error: ...`
and nothing written; never a traceback, an internal error, a hang (a 30 s alarm per case), or more than a
small bound of memory (tracemalloc's peak) whatever size the bytes declare. The inputs stay as they were.
Derandomized (fixed cases); the number of cases tried is printed.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rembert_convert.cli import main
from testkit.index_table import decode_proto, encode_proto, read_entries, shape_proto, write_index

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-rembert"
INDEX, DATA = "model.ckpt-3.index", "model.ckpt-3.data-00000-of-00001"
CONFIG, SPM = "bert_config.json", "sentencepiece.model"
SECONDS_PER_CASE = 30
MEMORY_BOUND = 64 << 20  # the example converts with a few MiB; a declared size must never be allocated blindly
TRIED: Counter = Counter()
OUTCOMES: Counter = Counter()

HUGE = st.sampled_from([0, 1, 2, 7, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1])
INT64 = st.one_of(HUGE, st.integers(0, 2**64 - 1), st.integers(-(2**63), -1))
FUZZ_SETTINGS = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Mutation:
    """A named change to one file; hypothesis prints the name of a failing case."""

    def __init__(self, description: str, apply) -> None:
        self.description, self.apply = description, apply

    def __call__(self, path: Path) -> None:
        self.apply(path)

    def __repr__(self) -> str:
        return self.description


class Hang(BaseException):
    """The alarm went off: a case ran longer than SECONDS_PER_CASE (BaseException: nothing may catch it)."""


def _alarm(signum, frame):
    raise Hang(f"a case ran longer than {SECONDS_PER_CASE} s")


@functools.cache
def clean_weights() -> bytes:
    """pytorch_model.bin of the unchanged example: what a case that converts must give too (the weights are
    checksummed, and nothing a mutation can leave valid changes them)."""
    with tempfile.TemporaryDirectory() as scratch:
        result = CliRunner().invoke(main, ["convert", str(EXAMPLE), "--format", "pytorch", "--no-tokenizer", "-o",
                                           f"{scratch}/out", "--quiet"])
        assert result.exit_code == 0, result.output
        return (Path(scratch) / "out" / "pytorch_model.bin").read_bytes()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(target: str, mutate) -> None:
    """Copy the example, apply `mutate(path_of_target)`, convert, and check the promises."""
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        ckpt = scratch / "ckpt"
        shutil.copytree(EXAMPLE, ckpt)
        mutate(ckpt / target)
        before = snapshot(ckpt)
        out = scratch / "out"
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(SECONDS_PER_CASE)
        tracemalloc.start()
        try:
            # The tokenizer (its conversion measures agreement on the probe corpus) only where it is the target.
            tokenizer = ["--tokenizer", str(ckpt / SPM)] if target == SPM else ["--no-tokenizer"]
            result = CliRunner().invoke(main, ["convert", str(ckpt), "--format", "pytorch", *tokenizer, "-o",
                                               str(out), "--quiet"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        TRIED[target] += 1
        OUTCOMES[result.exit_code] += 1
        if isinstance(result.exception, Hang):
            raise result.exception
        assert result.exit_code in (0, 2), result.output
        assert "Traceback" not in result.output and "internal error" not in result.output, result.output
        assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.0f} MiB"
        assert snapshot(ckpt) == before  # inputs untouched
        if result.exit_code == 2:
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.output
            assert sorted(p.name for p in scratch.iterdir()) == ["ckpt"]  # nothing written, no debris
        else:  # converted: then with the weights of the unchanged example, never silently other ones
            assert (out / "pytorch_model.bin").read_bytes() == clean_weights()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- byte-level mutations --------------------------------------------------------------------------------------


@st.composite
def byte_mutation(draw):
    """A function that damages a file's bytes: truncate, flip bits, overwrite a run, or replace it all."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "replace"]))
    fraction = draw(st.floats(0, 1))
    flips = draw(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=4))
    junk = draw(st.binary(min_size=1, max_size=64))

    def mutate(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        where = min(int(fraction * len(raw)), len(raw) - 1)
        if kind == "truncate":
            raw = raw[:where]
        elif kind == "flip":
            for position, bit in flips:
                raw[min(int(position * len(raw)), len(raw) - 1)] ^= 1 << bit
        elif kind == "overwrite":
            raw[where:where + len(junk)] = junk
        else:
            raw = bytearray(junk)
        path.write_bytes(bytes(raw))

    detail = {"truncate": f"at {fraction:.3f}", "flip": f"bits {flips}",
              "overwrite": f"at {fraction:.3f} with {junk!r}", "replace": f"by {junk!r}"}[kind]
    return Mutation(f"{kind} {detail}", mutate)


# -- declared values with valid checksums --------------------------------------------------------------------------


@st.composite
def index_declaration(draw):
    """Rewrite one index entry (or the header) with a declared dtype/shape/shard/offset/size/crc/slice."""
    entries = read_entries(EXAMPLE / INDEX)
    which = draw(st.integers(0, len(entries) - 1))
    field = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7]))
    value = draw(INT64)
    dims = draw(st.lists(st.one_of(HUGE, st.integers(0, 600)), min_size=0, max_size=4))
    extents = draw(st.lists(st.tuples(INT64, INT64), min_size=0, max_size=3))

    def mutate(path: Path) -> None:
        key, proto = entries[which]
        fields = [f for f in decode_proto(proto) if f[0] != field]
        if field == 2:
            fields.append((2, 2, shape_proto(dims)))
        elif field == 7:  # a slice spec: Extent {start (1), length (2)} per dimension
            fields.append((7, 2, encode_proto([(1, 2, encode_proto([(1, 0, s), (2, 0, n)])) for s, n in extents])))
        else:
            fields.append((field, 5 if field == 6 else 0, value))
        rewritten = list(entries)
        rewritten[which] = (key, encode_proto(sorted(fields, key=lambda f: f[0])))
        write_index(path, rewritten)

    shown = {2: f"shape {dims}", 7: f"slices {extents}"}.get(field, f"field {field} = {value}")
    return Mutation(f"entry {entries[which][0]!r}: {shown}", mutate)


CONFIG_VALUES = st.one_of(INT64, st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=8), st.none(),
                          st.booleans(), st.lists(st.integers(0, 3), max_size=2), st.just({}))


@st.composite
def config_declaration(draw):
    config = json.loads((EXAMPLE / CONFIG).read_text())
    key = draw(st.sampled_from(sorted(config) + ["num_labels", "unknown_key"]))
    value = draw(CONFIG_VALUES)

    def mutate(path: Path) -> None:
        changed = dict(config)
        changed[key] = value
        path.write_text(json.dumps(changed))

    return Mutation(f"config {key} = {value!r}", mutate)


# -- the properties ------------------------------------------------------------------------------------------------


def fuzz_property(name: str, target: str, strategy, max_examples: int):
    """A hypothesis property: `strategy`'s mutations of the example's `target` file, each one run_case."""

    @settings(FUZZ_SETTINGS, max_examples=max_examples)
    @given(mutate=strategy())
    def fuzz(mutate):
        run_case(target, mutate)

    fuzz.__name__ = name
    return fuzz


PROPERTIES = [
    fuzz_property("fuzz_index_bytes", INDEX, byte_mutation, 70),
    fuzz_property("fuzz_index_declarations", INDEX, index_declaration, 110),
    fuzz_property("fuzz_data_bytes", DATA, byte_mutation, 50),
    fuzz_property("fuzz_config_bytes", CONFIG, byte_mutation, 40),
    fuzz_property("fuzz_config_values", CONFIG, config_declaration, 80),
    fuzz_property("fuzz_sentencepiece_bytes", SPM, byte_mutation, 60),
]


@pytest.mark.parametrize("fuzz", PROPERTIES, ids=lambda f: f.__name__)
def test_bad_bytes_never_crash(fuzz, capsys):
    tried_before, outcomes_before = sum(TRIED.values()), Counter(OUTCOMES)
    fuzz()
    tried = sum(TRIED.values()) - tried_before
    outcomes = OUTCOMES - outcomes_before
    with capsys.disabled():
        print(f"\n{fuzz.__name__}: {tried} cases tried (exit 0: {outcomes[0]}, exit 2: {outcomes[2]})")
    assert tried > 0
