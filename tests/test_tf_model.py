"""The TF2 reference models: every output of all seven heads, loaded from tf_model.h5, against the PyTorch heads
loaded from pytorch_model.bin (eager and under tf.function), base and MLM against the numpy float64 ground truth
of the original graph, plus the cache, cross-attention, masks, loading rules and errors."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import torch

from converters.convert import ConvertOptions, convert_checkpoint
from rembert_ref.errors import UserError
from converters.mapping import ENCODER, MLM, POOLER, RULES, expand, read_torch_weights_as_tf, torch_to_tf_weights
from rembert_ref import tf_model as T
from rembert_ref import torch_model as P
from rembert_ref.config import RemBertConfig
from rembert_ref.numpy_reference import original_forward

TOLERANCE = 1e-5  # fp32 max abs difference: the bar, against PyTorch fp32 and numpy float64 alike
HEADS = list(T.MODEL_CLASSES)
TASK_HEAD_WEIGHTS = {
    "TFRemBertForSequenceClassification": ["classifier/bias:0", "classifier/kernel:0"],
    "TFRemBertForMultipleChoice": ["classifier/bias:0", "classifier/kernel:0"],
    "TFRemBertForTokenClassification": ["classifier/bias:0", "classifier/kernel:0"],
    "TFRemBertForQuestionAnswering": ["qa_outputs/bias:0", "qa_outputs/kernel:0"],
}


def _convert(tiny_ckpt, tmp_path_factory, activation: str) -> Path:
    """pytorch_model.bin and tf_model.h5 written in one pass from the synthetic TF1 checkpoint."""
    out = tmp_path_factory.mktemp(f"tf-{activation}") / "model"
    convert_checkpoint(tiny_ckpt.prefix, out, ["pytorch", "tf2"], ConvertOptions(quiet=True, activation=activation))
    return out


@pytest.fixture(scope="module")
def converted(tiny_ckpt, tmp_path_factory) -> Path:
    return _convert(tiny_ckpt, tmp_path_factory, "tanh")  # TF1 BERT's gelu, the default


@pytest.fixture(scope="module")
def converted_exact(tiny_ckpt, tmp_path_factory) -> Path:
    return _convert(tiny_ckpt, tmp_path_factory, "exact")


def _inputs(config: dict, seed: int = 3, batch: int = 3, seq: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    attention_mask = np.ones((batch, seq), dtype=np.int64)
    attention_mask[1, 5:] = 0  # padding makes the mask matter
    return {
        "input_ids": rng.integers(0, config["vocab_size"], size=(batch, seq)),
        "token_type_ids": rng.integers(0, config["type_vocab_size"], size=(batch, seq)),
        "attention_mask": attention_mask,
    }


def _head_inputs(name: str, config: RemBertConfig, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The head's inputs, with labels, so that every output including the loss is compared."""
    rng = np.random.default_rng(11)
    inputs = dict(base)
    batch, seq = base["input_ids"].shape
    if name in ("TFRemBertForMaskedLM", "TFRemBertForCausalLM"):
        labels = base["input_ids"].copy()
        labels[0, 1] = labels[2, 4] = -100  # not scored
        inputs["labels"] = labels
    elif name == "TFRemBertForSequenceClassification":
        inputs["labels"] = rng.integers(0, config.num_labels, size=(batch,))
    elif name == "TFRemBertForMultipleChoice":
        # (B, C, T): choice c of example b is example b's inputs rolled by c positions
        inputs = {k: np.stack([np.roll(v, c, axis=1) for c in range(4)], axis=1) for k, v in base.items()}
        inputs["labels"] = rng.integers(0, 4, size=(batch,))
    elif name == "TFRemBertForTokenClassification":
        labels = rng.integers(0, config.num_labels, size=(batch, seq))
        labels[1, 5:] = -100
        inputs["labels"] = labels
    elif name == "TFRemBertForQuestionAnswering":
        inputs["start_positions"] = np.array([1, 3, seq + 4])  # the last one is outside: clamped and ignored
        inputs["end_positions"] = np.array([2, 6, 0])
    return inputs


def _config_for(name: str, directory: Path) -> RemBertConfig:
    config = RemBertConfig.from_json_file(directory / "config.json")
    if name == "TFRemBertForCausalLM":
        return dataclasses.replace(config, is_decoder=True)
    if name == "TFRemBertForSequenceClassification":
        return dataclasses.replace(config, num_labels=3)  # distinct from the 2 of the QA head
    if name == "TFRemBertForTokenClassification":
        return dataclasses.replace(config, num_labels=5)
    return config


def _compare(ours, reference, where: str = "") -> int:
    """Max abs difference of every tensor in two (nested) outputs below TOLERANCE; returns how many."""
    if reference is None:
        assert ours is None, f"{where}: PyTorch gives None, TF gives a value"
        return 0
    if isinstance(reference, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) == len(reference), where
        return sum(_compare(o, r, f"{where}[{i}]") for i, (o, r) in enumerate(zip(ours, reference, strict=True)))
    reference = reference.detach().double().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == reference.shape, f"{where}: shape {ours.shape} != {reference.shape}"
    diff = float(np.max(np.abs(ours - reference))) if ours.size else 0.0
    assert diff < TOLERANCE, f"{where}: max abs diff {diff:.2e}"
    return 1


def _load_pair(name: str, directory: Path, tmp_path: Path):
    """The PyTorch head from pytorch_model.bin and the TF head from tf_model.h5; a new task head is initialised
    once in PyTorch, saved, and the TF head loads the same file, so both frameworks share it."""
    config = _config_for(name, directory)
    torch.manual_seed(0)
    torch_model = P.MODEL_CLASSES[name.removeprefix("TF")].from_pretrained(directory, config=config)
    tf_model = T.MODEL_CLASSES[name].from_pretrained(directory, config=config)
    assert torch_model.loading_info["weights_file"] == ["pytorch_model.bin"]
    assert tf_model.loading_info["weights_file"] == ["tf_model.h5"]
    assert tf_model.loading_info["missing"] == []
    # Only the task head is new; every encoder, pooler and MLM-head weight came from tf_model.h5.
    assert tf_model.loading_info["newly_initialized"] == TASK_HEAD_WEIGHTS.get(name, [])
    if name in TASK_HEAD_WEIGHTS:
        torch_model.save_pretrained(tmp_path / "task-head")
        values, _ = read_torch_weights_as_tf(tmp_path / "task-head", config)
        tf_model.assign_weights({k: values[k] for k in TASK_HEAD_WEIGHTS[name]})
    return torch_model, tf_model


@pytest.mark.parametrize("name", HEADS)
def test_every_output_matches_pytorch(name, tiny_ckpt, converted, tmp_path):
    _check_every_output(name, tiny_ckpt, converted, tmp_path)


@pytest.mark.parametrize("name", ["TFRemBertModel", "TFRemBertForMaskedLM"])
def test_exact_gelu_outputs_match_pytorch(name, tiny_ckpt, converted_exact, tmp_path):
    _check_every_output(name, tiny_ckpt, converted_exact, tmp_path)


def _check_every_output(name: str, tiny_ckpt, directory: Path, tmp_path: Path) -> None:
    torch_model, tf_model = _load_pair(name, directory, tmp_path)
    inputs = _head_inputs(name, tf_model.config, _inputs(tiny_ckpt.config))
    flags = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        expected = torch_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, **flags)
    tf_inputs = {k: tf.constant(v) for k, v in inputs.items()}
    for mode, model in (("eager", tf_model), ("tf.function", tf.function(tf_model))):
        result = model(**tf_inputs, **flags)
        assert type(result).__name__ == type(expected).__name__
        compared = 0
        for field in dataclasses.fields(expected):
            compared += _compare(getattr(result, field.name), getattr(expected, field.name), f"{mode} {field.name}")
        layers = tiny_ckpt.config["num_hidden_layers"]
        assert compared >= 2 * layers + 1 + 2, f"{mode}: only {compared} tensors compared"
        if name != "TFRemBertModel":
            assert result.loss is not None and np.isfinite(result.loss.numpy())


@pytest.mark.parametrize("activation", ["tanh", "exact"])
def test_base_and_mlm_match_the_original_graph(activation, tiny_ckpt, request):
    directory = request.getfixturevalue("converted" if activation == "tanh" else "converted_exact")
    inputs = _inputs(tiny_ckpt.config, seed=5, batch=4)
    reference = original_forward(tiny_ckpt.variables, tiny_ckpt.config, **inputs, activation=activation)
    base = T.TFRemBertModel.from_pretrained(directory)
    out = base(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == tiny_ckpt.config["num_hidden_layers"] + 1
    _compare(out.hidden_states, reference["hidden_states"], "hidden_states")
    _compare(out.attentions, reference["attentions"], "attentions")
    _compare(out.last_hidden_state, reference["last_hidden_state"], "last_hidden_state")
    _compare(out.pooler_output, reference["pooler_output"], "pooler_output")

    mlm = T.TFRemBertForMaskedLM.from_pretrained(directory)
    logits = tf.function(mlm)(**inputs).logits
    _compare(logits, reference["mlm_logits"], "mlm logits")


def test_weight_names_are_the_mapping_tables(tiny_ckpt):
    config = RemBertConfig.from_original(tiny_ckpt.config)
    by_part = {part: {tf for rule in RULES if rule.part == part for _, _, tf in expand(rule, config)}
               for part in (ENCODER, POOLER, MLM)}
    for name, cls in T.MODEL_CLASSES.items():
        model = cls(dataclasses.replace(config, is_decoder=name == "TFRemBertForCausalLM"))
        expected = set(by_part[ENCODER]) | set(TASK_HEAD_WEIGHTS.get(name, []))
        if cls.add_pooling_layer:
            expected |= by_part[POOLER]
        if hasattr(model, "cls"):
            expected |= by_part[MLM]
        assert set(model.weights_by_name()) == expected, name
        assert all(v.name.startswith(cls.keras_name + "/") for v in model.variables)


def test_loads_our_pytorch_and_safetensors_files(tiny_ckpt, converted, tmp_path):
    directory = converted
    from_h5 = T.TFRemBertForMaskedLM.from_pretrained(directory)
    torch_only = tmp_path / "torch-only"
    torch_only.mkdir()
    for name in ("pytorch_model.bin", "config.json"):
        shutil.copy(directory / name, torch_only / name)
    safetensors_dir = tmp_path / "safetensors"
    convert_checkpoint(tiny_ckpt.prefix, safetensors_dir, ["safetensors"], ConvertOptions(quiet=True))
    for path, weights_file in ((torch_only, "pytorch_model.bin"), (safetensors_dir, "model.safetensors")):
        values, read_from = read_torch_weights_as_tf(path, from_h5.config)
        assert read_from == weights_file
        model = T.TFRemBertForMaskedLM.from_pretrained(path, weights=values, weights_file=read_from)
        assert model.loading_info["weights_file"] == [weights_file]
        reference = from_h5.weights_by_name()
        for tf_name, variable in model.weights_by_name().items():
            # The same numbers, transposed back from PyTorch's [out, in] where the table says so.
            np.testing.assert_array_equal(variable.numpy(), reference[tf_name].numpy(), err_msg=tf_name)


def test_causal_lm_cache_matches_full_forward_and_pytorch(tiny_ckpt, converted, tmp_path):
    directory = converted
    torch_model, tf_model = _load_pair("TFRemBertForCausalLM", directory, tmp_path)
    ids = _inputs(tiny_ckpt.config)["input_ids"]
    full = tf_model(input_ids=ids).logits
    step = tf.function(tf_model)
    first = step(input_ids=ids[:, :4], use_cache=True)
    assert len(first.past_key_values) == tiny_ckpt.config["num_hidden_layers"]
    second = step(input_ids=ids[:, 4:], past_key_values=first.past_key_values, use_cache=True)
    _compare(second.logits, full.numpy()[:, 4:], "cached logits vs full forward")
    assert second.past_key_values[0][0].shape[2] == ids.shape[1]
    with torch.no_grad():
        t_first = torch_model(input_ids=torch.from_numpy(ids[:, :4]), use_cache=True)
        t_second = torch_model(input_ids=torch.from_numpy(ids[:, 4:]), past_key_values=t_first.past_key_values,
                               use_cache=True)
    _compare(second.logits, t_second.logits, "cached logits vs PyTorch")
    _compare(second.past_key_values, t_second.past_key_values, "past_key_values vs PyTorch")


def test_cross_attention_decoder_matches_pytorch(tiny_ckpt):
    config = dataclasses.replace(RemBertConfig.from_original(tiny_ckpt.config), is_decoder=True,
                                 add_cross_attention=True)
    torch.manual_seed(1)
    torch_model = P.RemBertForCausalLM(config).eval()
    tf_model = T.TFRemBertForCausalLM(config)
    values = torch_to_tf_weights(torch_model.state_dict(), config)
    assert tf_model.assign_weights(values) == []  # every PyTorch weight, cross-attention included, has a place
    assert set(values) == set(tf_model.weights_by_name())
    rng = np.random.default_rng(2)
    ids = rng.integers(0, config.vocab_size, size=(2, 6))
    encoder_states = rng.standard_normal((2, 5, config.hidden_size)).astype(np.float32)
    encoder_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    kwargs = {"encoder_hidden_states": encoder_states, "encoder_attention_mask": encoder_mask}
    with torch.no_grad():
        expected = torch_model(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(ids), output_attentions=True,
                               output_hidden_states=True, **{k: torch.from_numpy(v) for k, v in kwargs.items()})
        t_first = torch_model(input_ids=torch.from_numpy(ids[:, :3]), use_cache=True,
                              **{k: torch.from_numpy(v) for k, v in kwargs.items()})
        t_next = torch_model(input_ids=torch.from_numpy(ids[:, 3:]), past_key_values=t_first.past_key_values,
                             **{k: torch.from_numpy(v) for k, v in kwargs.items()})
    result = tf_model(input_ids=ids, labels=ids, output_attentions=True, output_hidden_states=True, **kwargs)
    for field in dataclasses.fields(expected):
        _compare(getattr(result, field.name), getattr(expected, field.name), field.name)
    assert len(result.cross_attentions) == config.num_hidden_layers
    first = tf_model(input_ids=ids[:, :3], use_cache=True, **kwargs)
    assert len(first.past_key_values[0]) == 4  # self (k, v) and cross (k, v)
    following = tf_model(input_ids=ids[:, 3:], past_key_values=first.past_key_values, **kwargs)
    _compare(following.logits, t_next.logits, "cross-attention decoder with cache")


def test_inputs_embeds_head_mask_and_3d_mask(tiny_ckpt, converted):
    directory = converted
    inputs = _inputs(tiny_ckpt.config)
    tf_model = T.TFRemBertModel.from_pretrained(directory)
    torch_model = P.RemBertModel.from_pretrained(directory)
    by_ids = tf_model(**inputs).last_hidden_state
    embeds = tf.gather(tf_model.rembert.embeddings.word_embeddings, inputs["input_ids"])
    by_embeds = tf_model(inputs_embeds=embeds, token_type_ids=inputs["token_type_ids"],
                         attention_mask=inputs["attention_mask"]).last_hidden_state
    _compare(by_embeds, by_ids.numpy(), "inputs_embeds")

    layers, heads = tiny_ckpt.config["num_hidden_layers"], tiny_ckpt.config["num_attention_heads"]
    head_mask = np.ones((layers, heads), dtype=np.float32)
    head_mask[1, 2] = 0.0
    seq = inputs["input_ids"].shape[1]
    mask_3d = np.tril(np.ones((seq, seq), dtype=np.int64))[None].repeat(3, axis=0)  # (B, T, S)
    # (nh,) is one mask for every layer: the (L, nh) one's row 1 given alone
    for extra in ({"head_mask": head_mask}, {"head_mask": head_mask[1]}, {"attention_mask": mask_3d}):
        args = {**inputs, **extra}
        result = tf_model(**args, output_attentions=True, output_hidden_states=True)
        with torch.no_grad():
            expected = torch_model(**{k: torch.from_numpy(v) for k, v in args.items()}, output_attentions=True,
                                   output_hidden_states=True)
        for field in dataclasses.fields(expected):
            _compare(getattr(result, field.name), getattr(expected, field.name), f"{list(extra)} {field.name}")
    masked = tf_model(**inputs, head_mask=head_mask, output_attentions=True).attentions[1][:, 2]
    assert float(tf.reduce_max(tf.abs(masked))) == 0.0


def test_outputs_index_like_pytorch(tiny_ckpt):
    config = RemBertConfig.from_original(tiny_ckpt.config)
    model = T.TFRemBertForMaskedLM(config)
    ids = _inputs(tiny_ckpt.config)["input_ids"]
    out = model(input_ids=ids)
    as_tuple = model(input_ids=ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1  # None fields are skipped, as in PyTorch
    np.testing.assert_array_equal(as_tuple[0], out.logits)
    np.testing.assert_array_equal(out[0], out["logits"])
    with_loss = model(input_ids=ids, labels=ids)
    assert len(with_loss) == 2 and with_loss[0].shape == ()


def test_loading_rules_and_errors(tiny_ckpt, converted, tmp_path):
    directory = converted
    mlm = T.TFRemBertForMaskedLM.from_pretrained(directory)
    assert mlm.loading_info["unexpected"] == ["rembert/pooler/dense/bias:0", "rembert/pooler/dense/kernel:0"]
    assert mlm.loading_info["missing"] == mlm.loading_info["newly_initialized"] == []

    bare = tmp_path / "bare"
    convert_checkpoint(tiny_ckpt.prefix, bare, ["tf2"], ConvertOptions(quiet=True, mlm_head=False))
    with pytest.raises(UserError, match=r"lacks 6 weight\(s\) TFRemBertForMaskedLM needs: mlm___cls/"):
        T.TFRemBertForMaskedLM.from_pretrained(bare)
    lenient = T.TFRemBertForMaskedLM.from_pretrained(bare, strict_backbone=False)
    assert len(lenient.loading_info["missing"]) == 6
    assert lenient.loading_info["newly_initialized"] == []  # missing backbone weights are not task heads
    assert T.TFRemBertModel.from_pretrained(bare).loading_info["unexpected"] == []

    config = RemBertConfig.from_json_file(directory / "config.json")
    with pytest.raises(UserError, match="do not fit the config"):
        T.TFRemBertModel.from_pretrained(directory, config=dataclasses.replace(config, intermediate_size=36))
    with pytest.raises(UserError, match="config.json does not exist"):
        T.TFRemBertModel.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(directory / "config.json", empty / "config.json")
    with pytest.raises(UserError, match="tf_model.h5|model.safetensors"):
        T.TFRemBertModel.from_pretrained(empty)
    with pytest.raises(UserError, match="is_decoder=True"):
        T.TFRemBertForCausalLM(config)
    with pytest.raises(UserError, match="exactly one of input_ids and inputs_embeds"):
        mlm()
    with pytest.raises(tf.errors.InvalidArgumentError, match="vocab_size"):
        mlm(input_ids=np.array([[1, tiny_ckpt.config["vocab_size"]]]))


# -- paths the comparisons above do not reach: found by a mutation review of tf_model.py ----------------------


def _random_pair(name: str, config: RemBertConfig, seed: int = 0):
    """A PyTorch head with every weight random (biases and LayerNorms too, so that none is left at its
    initial value) and the TF head holding the same numbers."""
    torch.manual_seed(seed)
    torch_model = P.MODEL_CLASSES[name.removeprefix("TF")](config).eval()
    with torch.no_grad():
        for parameter in torch_model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    tf_model = T.MODEL_CLASSES[name](config)
    values = torch_to_tf_weights(torch_model.state_dict(), config)
    assert tf_model.assign_weights(values) == [] and set(values) == set(tf_model.weights_by_name())
    return torch_model, tf_model


def _compare_fields(result, expected, where: str) -> None:
    for field in dataclasses.fields(expected):
        _compare(getattr(result, field.name), getattr(expected, field.name), f"{where} {field.name}")


def test_startup_notices_are_dropped_and_every_other_line_reaches_stderr(capfd):
    """A filter that swallowed a real import error, let a notice through, or left fd 2 captured afterwards
    would hide from the user what went wrong, or clutter every command's output."""
    notices = [  # the shapes TensorFlow's C++ libraries print on import (absl lines, the two unformatted ones)
        "I0000 00:00:1764557400.123456   41233 port.cc:153] oneDNN custom operations are on.\n",
        "W0000 00:00:1764557400.200000   41233 cpu_feature_guard.cc:210] This TensorFlow binary is optimized\n",
        "E0000 00:00:1764557400.300000   41233 cuda_dnn.cc:8310] Unable to register cuDNN factory\n",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n",
    ]
    real = ["Traceback (most recent call last):\n", "ImportError: libcudart.so.12: cannot open shared object file\n"]
    capfd.readouterr()
    with T._startup_notices_hidden():
        for line in notices[:2] + real[:1] + notices[2:] + real[1:]:
            os.write(2, line.encode())
    os.write(2, b"written after the import\n")
    assert capfd.readouterr().err == "".join(real) + "written after the import\n"


@pytest.mark.parametrize(("num_labels", "problem_type", "labels"), [
    (1, None, "scores"),  # one output: regression, inferred
    (4, "regression", "scores"),  # the config's problem_type wins over the inference from float labels
    (4, None, "multi_hot"),  # float labels on several outputs: multi-label, inferred
    (4, "single_label_classification", "classes"),
])
def test_sequence_classification_loss_of_every_problem_type_matches_pytorch(num_labels, problem_type, labels,
                                                                             tiny_ckpt):
    """Only the single-label loss is compared above: a regression (one or several outputs) or multi-label loss
    computed with the wrong formula, shape or reduction would go unnoticed."""
    config = dataclasses.replace(RemBertConfig.from_original(tiny_ckpt.config), num_labels=num_labels,
                                 problem_type=problem_type)
    torch_model, tf_model = _random_pair("TFRemBertForSequenceClassification", config, seed=4)
    inputs = _inputs(tiny_ckpt.config, seed=6)
    rng = np.random.default_rng(8)
    batch = inputs["input_ids"].shape[0]
    shape = (batch,) if num_labels == 1 else (batch, num_labels)
    target = {"scores": rng.standard_normal(shape).astype(np.float32),
              "multi_hot": rng.integers(0, 2, size=shape).astype(np.float32),
              "classes": rng.integers(0, num_labels, size=(batch,))}[labels]
    with torch.no_grad():
        expected = torch_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, labels=torch.from_numpy(target))
    result = tf_model(**inputs, labels=target)
    _compare_fields(result, expected, f"{problem_type} {labels}")


def test_dropout_runs_where_and_at_the_rate_pytorch_runs_it_and_only_in_training(tiny_ckpt, monkeypatch):
    """With three distinct rates and dropout replaced in both frameworks by a deterministic scaling, a dropout
    left out, put elsewhere, given the wrong rate, or applied with training=False changes the outputs."""
    config = dataclasses.replace(RemBertConfig.from_original(tiny_ckpt.config), hidden_dropout_prob=0.1,
                                 attention_probs_dropout_prob=0.2, classifier_dropout_prob=0.3)
    monkeypatch.setattr(T.tf.nn, "dropout", lambda x, rate, **_: x * (1.0 + rate))
    monkeypatch.setattr(torch.nn.functional, "dropout",
                        lambda x, p=0.5, training=True, inplace=False: x * (1.0 + p) if training else x)
    inputs = _inputs(tiny_ckpt.config, seed=9)
    for name in ("TFRemBertForMaskedLM", "TFRemBertForCausalLM", "TFRemBertForSequenceClassification",
                 "TFRemBertForTokenClassification", "TFRemBertForQuestionAnswering"):
        head_config = dataclasses.replace(config, is_decoder=name == "TFRemBertForCausalLM")
        torch_model, tf_model = _random_pair(name, head_config, seed=5)
        for training in (False, True):
            torch_model.train(training)
            with torch.no_grad():
                expected = torch_model(**{k: torch.from_numpy(v) for k, v in inputs.items()},
                                       output_hidden_states=True, output_attentions=True)
            result = tf_model(**inputs, output_hidden_states=True, output_attentions=True, training=training)
            _compare_fields(result, expected, f"{name} training={training}")


def test_a_row_whose_attention_mask_is_all_zeros_matches_pytorch(tiny_ckpt):
    """The dtype's minimum, not -10000, is the masking value: the difference shows only in such a row (each of
    its positions then attends to all keys alike)."""
    config = RemBertConfig.from_original(tiny_ckpt.config)
    torch_model, tf_model = _random_pair("TFRemBertModel", config, seed=6)
    inputs = _inputs(tiny_ckpt.config, seed=10)
    inputs["attention_mask"][2] = 0
    with torch.no_grad():
        expected = torch_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_attentions=True,
                               output_hidden_states=True)
    result = tf_model(**inputs, output_attentions=True, output_hidden_states=True)
    _compare_fields(result, expected, "all-zero mask row")


def test_cross_attention_with_a_3d_encoder_mask_and_a_head_mask_matches_pytorch(tiny_ckpt):
    """A per-query (B, T, S) encoder mask read as (B, S), or a head mask left out of the cross-attention,
    would change the decoder's outputs."""
    config = dataclasses.replace(RemBertConfig.from_original(tiny_ckpt.config), is_decoder=True,
                                 add_cross_attention=True)
    torch_model, tf_model = _random_pair("TFRemBertForCausalLM", config, seed=7)
    rng = np.random.default_rng(12)
    ids = rng.integers(0, config.vocab_size, size=(2, 6))
    encoder_states = rng.standard_normal((2, 5, config.hidden_size)).astype(np.float32)
    encoder_mask = rng.integers(0, 2, size=(2, 6, 5))
    encoder_mask[..., 0] = 1  # every query sees at least one encoder position
    head_mask = np.ones((config.num_hidden_layers, config.num_attention_heads), dtype=np.float32)
    head_mask[0, 1] = head_mask[2, 3] = 0.0
    kwargs = {"input_ids": ids, "labels": ids, "encoder_hidden_states": encoder_states,
              "encoder_attention_mask": encoder_mask, "head_mask": head_mask}
    with torch.no_grad():
        expected = torch_model(**{k: torch.from_numpy(v) for k, v in kwargs.items()}, output_attentions=True,
                               output_hidden_states=True)
    result = tf_model(**kwargs, output_attentions=True, output_hidden_states=True)
    _compare_fields(result, expected, "3-D encoder mask, head mask")


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh"])
def test_every_supported_activation_matches_pytorch(hidden_act, tiny_ckpt):
    """The converted files only use gelu and gelu_new: an activation name mapped to the wrong function (e.g.
    gelu_pytorch_tanh to the exact gelu) would go unnoticed."""
    config = dataclasses.replace(RemBertConfig.from_original(tiny_ckpt.config), hidden_act=hidden_act)
    torch_model, tf_model = _random_pair("TFRemBertForMaskedLM", config, seed=8)
    inputs = _inputs(tiny_ckpt.config, seed=13)
    with torch.no_grad():
        expected = torch_model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    _compare_fields(tf_model(**inputs), expected, hidden_act)


def test_weights_given_to_from_pretrained_win_over_the_directorys_tf_model_h5(converted):
    """from_pretrained(weights=...) on a directory that also holds tf_model.h5 must load the given weights
    (the PyTorch files, which may differ), and say so."""
    values, read_from = read_torch_weights_as_tf(converted, RemBertConfig.from_json_file(converted / "config.json"))
    values["rembert/pooler/dense/bias:0"] = values["rembert/pooler/dense/bias:0"] + 1.0  # not what the h5 holds
    model = T.TFRemBertModel.from_pretrained(converted, weights=values, weights_file=read_from)
    assert model.loading_info["weights_file"] == [read_from] == ["pytorch_model.bin"]
    for tf_name, variable in model.weights_by_name().items():
        np.testing.assert_array_equal(variable.numpy(), values[tf_name], err_msg=tf_name)


def test_a_cross_attention_decoder_loads_an_encoder_file_with_new_cross_attention(converted):
    """Cross-attention is not in a pretrained encoder's file: it starts fresh and is listed as new, as in the
    PyTorch models, instead of failing the load as a missing backbone weight."""
    config = dataclasses.replace(RemBertConfig.from_json_file(converted / "config.json"), is_decoder=True,
                                 add_cross_attention=True)
    model = T.TFRemBertForCausalLM.from_pretrained(converted, config=config)
    new = model.loading_info["newly_initialized"]
    assert model.loading_info["missing"] == []
    assert new and all("/crossattention/" in name for name in new)
    assert set(new) == {n for n in model.weights_by_name() if "/crossattention/" in n}


def test_new_task_heads_follow_from_pretraineds_seed_and_dtype(converted):
    """seed= and dtype= of from_pretrained reach the model: the same seed gives the same new head, another
    seed another one, and dtype=tf.float64 gives float64 weights and outputs."""
    cls = T.TFRemBertForSequenceClassification
    kernel = "classifier/kernel:0"
    first, again, other = (cls.from_pretrained(converted, seed=s).weights_by_name()[kernel].numpy() for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    wide = cls.from_pretrained(converted, seed=1, dtype=tf.float64)
    assert {v.dtype for v in wide.variables} == {tf.float64}
    ids = np.array([[5, 17, 3, 40]])
    assert wide(input_ids=ids).logits.dtype == tf.float64
    np.testing.assert_allclose(wide(input_ids=ids).logits, cls.from_pretrained(converted, seed=1)(input_ids=ids).logits,
                               atol=1e-5)


def test_fresh_weights_are_initialised_like_pytorchs(tiny_ckpt):
    """What strict_backbone=False and new task heads start from: LayerNorm as the identity (gamma 1, beta 0),
    zero biases, normal(0, initializer_range) matrices, as the PyTorch models' _init_weights does."""
    config = RemBertConfig.from_original(tiny_ckpt.config)
    model = T.TFRemBertForSequenceClassification(config)
    for name, variable in model.weights_by_name().items():
        value = variable.numpy()
        if name.endswith("gamma:0"):
            np.testing.assert_array_equal(value, np.ones_like(value), err_msg=name)
        elif name.endswith(("beta:0", "bias:0")):
            np.testing.assert_array_equal(value, np.zeros_like(value), err_msg=name)
        else:
            assert 0.7 * config.initializer_range < value.std() < 1.3 * config.initializer_range, name


def test_multiple_choice_flattens_position_ids_and_inputs_embeds_like_pytorch(tiny_ckpt):
    """Every per-token input of shape (B, C, T, ...) must be folded into (B * C, T, ...): position_ids left
    unfolded would be read against the wrong choices (the comparison above passes none)."""
    config = RemBertConfig.from_original(tiny_ckpt.config)
    torch_model, tf_model = _random_pair("TFRemBertForMultipleChoice", config, seed=9)
    rng = np.random.default_rng(14)
    batch, choices, seq = 2, 3, 5
    inputs = {"inputs_embeds": rng.standard_normal((batch, choices, seq, config.input_embedding_size))
              .astype(np.float32),
              "position_ids": rng.integers(0, config.max_position_embeddings, size=(batch, choices, seq)),
              "token_type_ids": rng.integers(0, config.type_vocab_size, size=(batch, choices, seq)),
              "attention_mask": rng.integers(0, 2, size=(batch, choices, seq)) | np.eye(1, seq, dtype=np.int64),
              "labels": rng.integers(0, choices, size=(batch,))}
    with torch.no_grad():
        expected = torch_model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    _compare_fields(tf_model(**inputs), expected, "multiple choice")


def test_multiple_choice_without_any_input_is_the_base_models_one_line_error(tiny_ckpt):
    """Neither input_ids nor inputs_embeds: the same UserError as every other head, not a KeyError."""
    config = RemBertConfig.from_original(tiny_ckpt.config)
    torch_model, tf_model = _random_pair("TFRemBertForMultipleChoice", config, seed=9)
    for model, mask in ((torch_model, torch.ones(2, 3, 5)), (tf_model, np.ones((2, 3, 5), np.int64))):
        with pytest.raises(UserError, match="pass exactly one of input_ids and inputs_embeds"):
            model(attention_mask=mask)
