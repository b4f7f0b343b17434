"""The converted PyTorch models compute what the original TF1 graph computes (numpy float64 ground truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from converters.convert import ConvertOptions, convert_checkpoint
from rembert_ref.numpy_reference import original_forward
from rembert_ref.torch_model import RemBertForMaskedLM, RemBertModel

TOLERANCE = 1e-5  # fp32 against float64, max abs: the bar


def _inputs(config: dict, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch, seq = 5, 7
    input_ids = rng.integers(0, config["vocab_size"], size=(batch, seq))
    token_type_ids = rng.integers(0, config["type_vocab_size"], size=(batch, seq))
    attention_mask = np.ones((batch, seq), dtype=np.int64)
    attention_mask[1, 5:] = 0  # padded rows make the mask matter
    attention_mask[3, 2:] = 0
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="module", params=["tanh", "exact"])
def converted(request, tiny_ckpt, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"parity-{request.param}") / "model"
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "safetensors"],
                       ConvertOptions(quiet=True, activation=request.param))
    return request.param, out


def _torch_outputs(model: torch.nn.Module, inputs: dict[str, np.ndarray]):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True,
                     output_attentions=True, return_dict=True)


def _max_diff(ours: torch.Tensor, reference: np.ndarray) -> float:
    assert tuple(ours.shape) == reference.shape
    return float(np.max(np.abs(ours.double().numpy() - reference)))


def test_base_model_matches_original_graph(tiny_ckpt, converted):
    activation, out = converted
    inputs = _inputs(tiny_ckpt.config)
    reference = original_forward(tiny_ckpt.variables, tiny_ckpt.config, **inputs, activation=activation)
    model = RemBertModel.from_pretrained(out)
    result = _torch_outputs(model, inputs)
    assert len(result.hidden_states) == len(reference["hidden_states"]) == tiny_ckpt.config["num_hidden_layers"] + 1
    for i, (ours, ref) in enumerate(zip(result.hidden_states, reference["hidden_states"], strict=True)):
        assert _max_diff(ours, ref) < TOLERANCE, f"hidden state {i}"
    for i, (ours, ref) in enumerate(zip(result.attentions, reference["attentions"], strict=True)):
        assert _max_diff(ours, ref) < TOLERANCE, f"attention {i}"
    assert _max_diff(result.last_hidden_state, reference["last_hidden_state"]) < TOLERANCE
    assert _max_diff(result.pooler_output, reference["pooler_output"]) < TOLERANCE


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_masked_lm_matches_original_graph(tiny_ckpt, converted, weights, tmp_path):
    activation, out = converted
    only = tmp_path / "only"
    only.mkdir()
    (only / "config.json").write_bytes((out / "config.json").read_bytes())
    (only / weights).symlink_to(out / weights)
    inputs = _inputs(tiny_ckpt.config, seed=6)
    reference = original_forward(tiny_ckpt.variables, tiny_ckpt.config, **inputs, activation=activation)
    model = RemBertForMaskedLM.from_pretrained(only)
    assert model.loading_info["missing"] == [] and model.loading_info["newly_initialized"] == []
    result = _torch_outputs(model, inputs)
    assert _max_diff(result.logits, reference["mlm_logits"]) < TOLERANCE
    for i, (ours, ref) in enumerate(zip(result.hidden_states, reference["hidden_states"], strict=True)):
        assert _max_diff(ours, ref) < TOLERANCE, f"hidden state {i}"
    # The MLM head is real: its logits are far from what a randomly initialised head would give.
    assert float(np.std(reference["mlm_logits"])) > 0.5


def test_activation_choice_is_visible(tiny_ckpt, converted):
    """The two gelu forms differ on these weights by far more than the tolerance, so the tests above
    would catch a converter that wrote the wrong hidden_act."""
    activation, out = converted
    other = "exact" if activation == "tanh" else "tanh"
    inputs = _inputs(tiny_ckpt.config)
    wrong = original_forward(tiny_ckpt.variables, tiny_ckpt.config, **inputs, activation=other)
    result = _torch_outputs(RemBertForMaskedLM.from_pretrained(out), inputs)
    assert _max_diff(result.logits, wrong["mlm_logits"]) > 100 * TOLERANCE
