"""The tensor proof's own arithmetic: values read in many row slices, what a failing row reports (count, first
index, largest difference), and whether formats agree with each other, in all three formats.

The tiny tensors fit in one slice of DEFAULT_CHUNK_BYTES, so these tests shrink the slice to reach the paths a
full-size checkpoint takes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.convert import ConvertOptions, convert_checkpoint
from validation import tensor_proof
from validation.parity import verify_conversion

ALL = ("pytorch", "safetensors", "tf2")
WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"  # [vocab 99, input embedding 18], stored as is everywhere
KERNEL = "bert/encoder/layer_0/intermediate/dense/kernel"  # [32, 37]: PyTorch holds it transposed, Keras not


@pytest.fixture(scope="module")
def all_formats(tiny_ckpt, tmp_path_factory) -> Path:
    """pytorch_model.bin, model.safetensors and tf_model.h5 of the tiny checkpoint (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("all-formats") / "out"
    convert_checkpoint(tiny_ckpt.prefix, out, list(ALL), ConvertOptions(quiet=True))
    return out


@pytest.fixture(scope="module")
def names(tiny_ckpt, all_formats) -> dict[tuple[str, str], str]:
    """(format, checkpoint variable) -> the tensor's name in that format's file."""
    report = verify_conversion(tiny_ckpt.prefix, all_formats, functional=False)
    assert report.passed
    return {(r.format, r.source): r.tensor for r in report.tensor_rows if r.check == "values"}


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit(folder: Path, fmt: str, name: str, edit) -> None:
    """Apply `edit` to one tensor of one format's file as a float32 numpy array, in place in that file."""
    if fmt == "pytorch":
        import torch

        state = torch.load(folder / "pytorch_model.bin", weights_only=True)
        edit(state[name].numpy())  # shares the tensor's memory
        torch.save(state, folder / "pytorch_model.bin")
    elif fmt == "safetensors":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        edit(tensors[name])
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        import h5py

        with h5py.File(folder / "tf_model.h5", "a") as file:  # written in place: the layout convert chose stays
            values = file[name][()]
            edit(values)
            file[name][...] = values


def _rows(report, fmt: str, check: str = "values") -> list:
    return [r for r in report.tensor_rows if r.format == fmt and r.check == check]


def test_every_format_passes_when_read_one_row_at_a_time(tiny_ckpt, all_formats, monkeypatch):
    """Each slice must be read from its own rows of the file, and a transposed kernel still whole: a slice
    off by a row, or read from the wrong place, fails a correct folder."""
    monkeypatch.setattr(tensor_proof, "DEFAULT_CHUNK_BYTES", 1)  # iter_rows gives at least one row
    report = verify_conversion(tiny_ckpt.prefix, all_formats, functional=False)
    assert report.passed, [(r.format, r.tensor, r.detail) for r in report.tensor_failures]
    assert {r.format for r in report.tensor_rows if r.check == "values"} == set(ALL)


@pytest.mark.parametrize("fmt", ALL)
def test_changes_in_several_slices_are_counted_located_and_measured(tiny_ckpt, all_formats, names, tmp_path,
                                                                     monkeypatch, fmt):
    """differing, first_index and max_abs cover the whole tensor, not the last slice read, and the first index
    is in the tensor's rows, not the slice's."""
    row_bytes = 18 * 4  # a word-embedding row of float32
    monkeypatch.setattr(tensor_proof, "DEFAULT_CHUNK_BYTES", 7 * row_bytes)  # slices of 7 of its 99 rows
    # Two changes in the second slice (rows 7-13), the largest first; a smaller one in a later slice.
    changes = {(10, 3): 0.75, (12, 1): -0.125, (60, 5): 0.25}
    folder = _copy(all_formats, tmp_path)
    name = names[(fmt, WORD_EMBEDDINGS)]
    before, after = {}, {}

    def edit(values):
        for where, delta in changes.items():
            before[where] = values[where]
            values[where] += np.float32(delta)
        after.update({where: values[where] for where in changes})

    _edit(folder, fmt, name, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=(fmt,), functional=False)
    (row,) = [r for r in report.tensor_failures if r.check == "values"]
    largest = max(abs(float(after[w]) - float(before[w])) for w in changes)  # the float32 steps actually taken
    assert (row.tensor, row.differing, row.first_index) == (name, len(changes), min(changes))
    assert row.max_abs == pytest.approx(largest, rel=1e-12)
    assert f"{len(changes)} value(s)" in row.detail and str(list(min(changes))) in row.detail


def test_formats_changed_in_different_places_do_not_agree(tiny_ckpt, all_formats, names, tmp_path):
    """Two formats each one value off, in different places: as many differences each, but not the same
    values, so the agreement row fails too."""
    folder = _copy(all_formats, tmp_path)
    formats = ("pytorch", "safetensors")

    def bump(where):
        def edit(values):
            values[where] += np.float32(0.5)
        return edit

    for fmt, where in zip(formats, [(4, 2), (5, 3)], strict=True):
        _edit(folder, fmt, names[(fmt, WORD_EMBEDDINGS)], bump(where))
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=formats, functional=False)
    (agree,) = [r for r in _rows(report, tensor_proof.AGREEMENT, "agree") if r.source == WORD_EMBEDDINGS]
    assert not agree.passed
    assert agree.detail == "pytorch: differs; safetensors: differs"
    assert all(r.differing == 1 for fmt in formats for r in _rows(report, fmt) if r.source == WORD_EMBEDDINGS)


def test_the_same_wrong_value_in_both_layouts_agrees(tiny_ckpt, all_formats, names, tmp_path):
    """pytorch_model.bin holds the kernel transposed, tf_model.h5 as the checkpoint does: the same changed
    element in each is one disagreement with the source, but the formats agree (compared in the TF1 layout)."""
    folder = _copy(all_formats, tmp_path)
    source_index = (7, 30)  # [in, out] in the checkpoint's [32, 37]
    value = np.float32(3.0)

    def put(where):
        def edit(values):
            assert values[where] != value
            values[where] = value
        return edit

    _edit(folder, "pytorch", names[("pytorch", KERNEL)], put(source_index[::-1]))
    _edit(folder, "tf2", names[("tf2", KERNEL)], put(source_index))
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=("pytorch", "tf2"), functional=False)
    values = {r.format: r for r in report.tensor_failures if r.check == "values"}
    assert set(values) == {"pytorch", "tf2"}
    assert values["pytorch"].first_index == source_index[::-1] and values["tf2"].first_index == source_index
    (agree,) = [r for r in _rows(report, tensor_proof.AGREEMENT, "agree") if r.source == KERNEL]
    assert agree.passed, agree.detail


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_max_abs_of_a_half_precision_file_is_in_its_values_units(tiny_ckpt, tmp_path, dtype):
    """bfloat16 is carried as uint16 bits: the difference must be of the values, not of the bit patterns."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path / dtype
    convert_checkpoint(tiny_ckpt.prefix, out, ["safetensors"], ConvertOptions(quiet=True, dtype=dtype))
    name = "rembert.encoder.layer.1.attention.output.dense.weight"
    tensors = load_file(out / "model.safetensors")
    old = tensors[name][3, 4].clone()
    tensors[name][3, 4] = old + 0.5  # rounded to the file's dtype by torch
    step = abs(tensors[name][3, 4].double().item() - old.double().item())
    assert step > 0 and tensors[name].dtype == getattr(torch, dtype)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    report = verify_conversion(tiny_ckpt.prefix, out, functional=False)
    (row,) = report.tensor_failures
    assert (row.tensor, row.dtype, row.differing, row.first_index) == (name, dtype, 1, (3, 4))
    assert row.max_abs == pytest.approx(step, rel=1e-12)


def test_a_value_turned_nan_makes_the_largest_difference_infinite(tiny_ckpt, all_formats, names, tmp_path):
    """A NaN beside a small finite change must not report the small one as the largest difference."""
    folder = _copy(all_formats, tmp_path)
    name = names[("safetensors", WORD_EMBEDDINGS)]

    def edit(values):
        values[2, 2] = np.nan
        values[3, 3] += np.float32(0.01)

    _edit(folder, "safetensors", name, edit)
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=("safetensors",), functional=False)
    (row,) = report.tensor_failures
    assert (row.tensor, row.differing, row.first_index) == (name, 2, (2, 2))
    assert row.max_abs == float("inf")


def test_a_tensor_stored_as_float64_is_a_dtype_failure(tiny_ckpt, all_formats, names, tmp_path):
    """safetensors' F64 (no name of ours for it) is a wrong dtype, reported as such, not compared as float32;
    the agreement row says why that format differs."""
    from safetensors.numpy import load_file, save_file

    folder = _copy(all_formats, tmp_path)
    name = names[("safetensors", WORD_EMBEDDINGS)]
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = tensors[name].astype(np.float64)  # the same values, twice the bytes
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    report = verify_conversion(tiny_ckpt.prefix, folder, formats=("pytorch", "safetensors"), functional=False)
    assert [(r.format, r.tensor, r.check, r.dtype) for r in report.tensor_failures] == [
        ("safetensors", name, "dtype", "F64"), (tensor_proof.AGREEMENT, name, "agree", "-")]
    assert report.tensor_failures[1].detail == "pytorch: as the source; safetensors: dtype F64"
