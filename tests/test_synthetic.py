"""The synthetic original-format checkpoints, read back through TensorFlow's own checkpoint reader."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from rembert_ref.errors import UserError
from testkit.synthetic_checkpoint import main, synthetic_variables, write_synthetic_checkpoint
from tests.conftest import TINY_ORIGINAL_CONFIG


def expected_shapes(config: dict, *, pooler: bool = True, mlm: bool = True, nsp: bool = False,
                    output_embedding: str = "cls/predictions/output_embedding") -> dict[str, tuple[int, ...]]:
    """The original RemBERT TF1 variables, written out by hand from Google's modeling.py (kernels [in, out])."""
    v, h, e, o = (config[k] for k in ("vocab_size", "hidden_size", "input_embedding_size", "output_embedding_size"))
    i = config["intermediate_size"]
    shapes = {
        "bert/embeddings/word_embeddings": (v, e),
        "bert/embeddings/position_embeddings": (config["max_position_embeddings"], e),
        "bert/embeddings/token_type_embeddings": (config["type_vocab_size"], e),
        "bert/embeddings/LayerNorm/gamma": (e,),
        "bert/embeddings/LayerNorm/beta": (e,),
        "bert/encoder/embedding_hidden_mapping_in/kernel": (e, h),
        "bert/encoder/embedding_hidden_mapping_in/bias": (h,),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{n}"
        for proj in ("query", "key", "value"):
            shapes[f"{p}/attention/self/{proj}/kernel"] = (h, h)
            shapes[f"{p}/attention/self/{proj}/bias"] = (h,)
        shapes[f"{p}/attention/output/dense/kernel"] = (h, h)
        shapes[f"{p}/attention/output/dense/bias"] = (h,)
        shapes[f"{p}/intermediate/dense/kernel"] = (h, i)
        shapes[f"{p}/intermediate/dense/bias"] = (i,)
        shapes[f"{p}/output/dense/kernel"] = (i, h)
        shapes[f"{p}/output/dense/bias"] = (h,)
        for ln in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[f"{p}/{ln}/gamma"] = (h,)
            shapes[f"{p}/{ln}/beta"] = (h,)
    if pooler:
        shapes["bert/pooler/dense/kernel"] = (h, h)
        shapes["bert/pooler/dense/bias"] = (h,)
    if mlm:
        shapes["cls/predictions/transform/dense/kernel"] = (h, o)
        shapes["cls/predictions/transform/dense/bias"] = (o,)
        shapes["cls/predictions/transform/LayerNorm/gamma"] = (o,)
        shapes["cls/predictions/transform/LayerNorm/beta"] = (o,)
        shapes["cls/predictions/output_bias"] = (v,)
        shapes[output_embedding] = (v, o)
    if nsp:
        shapes["cls/seq_relationship/output_weights"] = (2, h)
        shapes["cls/seq_relationship/output_bias"] = (2,)
    return shapes


def read_all(prefix) -> tuple[dict[str, np.ndarray], dict[str, tf.DType]]:
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes = reader.get_variable_to_dtype_map()
    return {name: reader.get_tensor(name) for name in dtypes}, dtypes


def test_tiny_checkpoint_has_every_variable_with_slots(tiny_ckpt):
    model = expected_shapes(TINY_ORIGINAL_CONFIG)
    values, dtypes = read_all(tiny_ckpt.prefix)
    expected = {**model, "global_step": ()}
    for name, shape in model.items():
        expected[f"{name}/adam_m"] = shape
        expected[f"{name}/adam_v"] = shape
    assert {n: tuple(v.shape) for n, v in values.items()} == expected
    assert dtypes["global_step"] == tf.int64 and values["global_step"] == 3
    assert {dtypes[n] for n in expected if n != "global_step"} == {tf.float32}
    # The stored values are exactly the ones synthetic_variables returns.
    assert set(tiny_ckpt.variables) == set(model)
    for name in model:
        np.testing.assert_array_equal(values[name], tiny_ckpt.variables[name], err_msg=name)
        assert np.all(values[f"{name}/adam_v"] >= 0), name
        assert not np.array_equal(values[f"{name}/adam_m"], values[name]), name
    files = sorted(p.name for p in tiny_ckpt.directory.iterdir())
    assert files == ["bert_config.json", "checkpoint", "model.ckpt-3.data-00000-of-00001", "model.ckpt-3.index"]
    assert json.loads((tiny_ckpt.directory / "bert_config.json").read_text()) == TINY_ORIGINAL_CONFIG
    # TensorFlow's own lookup of the latest checkpoint must find it through the `checkpoint` file.
    assert tf.train.latest_checkpoint(str(tiny_ckpt.directory)) == str(tiny_ckpt.prefix)


def test_values_have_the_intended_scales():
    config = dict(TINY_ORIGINAL_CONFIG, hidden_size=64, intermediate_size=256)  # larger for stable statistics
    values = synthetic_variables(config, seed=1)
    kernel = values["bert/encoder/layer_0/intermediate/dense/kernel"]  # [64, 256]: std 1/sqrt(64)
    assert abs(kernel.std() - 64**-0.5) < 0.1 * 64**-0.5
    down = values["bert/encoder/layer_0/output/dense/kernel"]  # [256, 64]: std 1/sqrt(256)
    assert abs(down.std() - 256**-0.5) < 0.1 * 256**-0.5
    assert abs(values["bert/embeddings/word_embeddings"].std() - 1.0) < 0.1
    gamma = values["bert/encoder/layer_0/output/LayerNorm/gamma"]
    assert abs(gamma.mean() - 1.0) < 0.05 and 0.05 < gamma.std() < 0.15
    bias = values["bert/encoder/layer_0/intermediate/dense/bias"]
    assert np.all(bias != 0) and 0.05 < bias.std() < 0.15
    assert all(v.dtype == np.float32 for v in values.values())


def test_determinism_and_independence_from_options():
    a = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=0)
    b = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=0)
    c = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=1)
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.any(a[name] == c[name]), name
    # Distinct variables of the same shape must not share values (a per-name generator, not a reused one).
    q, k = (a[f"bert/encoder/layer_0/attention/self/{p}/kernel"] for p in ("query", "key"))
    assert not np.array_equal(q, k)
    assert not np.array_equal(q, a["bert/encoder/layer_1/attention/self/query/kernel"])
    # Turning heads on or off, or renaming the output embedding, leaves every other value unchanged.
    other = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=0, with_pooler=False, with_nsp=True,
                                output_embedding_name="cls/predictions/output_embeddings")
    assert "bert/pooler/dense/kernel" not in other and "cls/seq_relationship/output_weights" in other
    np.testing.assert_array_equal(other["cls/predictions/output_embeddings"], a["cls/predictions/output_embedding"])
    for name in a.keys() & other.keys():
        np.testing.assert_array_equal(a[name], other[name])
    bare = synthetic_variables(TINY_ORIGINAL_CONFIG, with_pooler=False, with_mlm_head=False)
    assert set(bare) == set(expected_shapes(TINY_ORIGINAL_CONFIG, pooler=False, mlm=False))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_casts_model_variables_only(tmp_path, dtype):
    prefix = write_synthetic_checkpoint(tmp_path, TINY_ORIGINAL_CONFIG, seed=2, step=7, dtype=dtype)
    values, dtypes = read_all(prefix)
    assert prefix == tmp_path / "model.ckpt-7"
    model = synthetic_variables(TINY_ORIGINAL_CONFIG, seed=2)
    numpy_dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    for name, value in model.items():
        assert dtypes[name] == tf.as_dtype(dtype), name
        np.testing.assert_array_equal(values[name], value.astype(numpy_dtype), err_msg=name)
        assert dtypes[f"{name}/adam_m"] == tf.float32 and dtypes[f"{name}/adam_v"] == tf.float32
    assert values["global_step"] == 7 and dtypes["global_step"] == tf.int64
    assert 'model_checkpoint_path: "model.ckpt-7"' in (tmp_path / "checkpoint").read_text()


def test_shards_heads_and_extra_variables(tmp_path):
    extra = {"bert/encoder/layer_0/attention/self/query/kernel/ExponentialMovingAverage": np.ones((2, 3), np.float32),
             "some_counter": np.array(5, np.int32)}
    prefix = write_synthetic_checkpoint(tmp_path, TINY_ORIGINAL_CONFIG, seed=0, num_shards=3, optimizer_slots=False,
                                        with_pooler=False, with_nsp=True, extra_variables=extra,
                                        output_embedding_name="cls/predictions/output_embeddings")
    data = sorted(tmp_path.glob("model.ckpt-3.data-*"))
    assert [p.name for p in data] == [f"model.ckpt-3.data-0000{k}-of-00003" for k in range(3)]
    assert all(p.stat().st_size > 0 for p in data)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind
    values, dtypes = read_all(prefix)
    model = expected_shapes(TINY_ORIGINAL_CONFIG, pooler=False, nsp=True,
                            output_embedding="cls/predictions/output_embeddings")
    assert set(values) == set(model) | set(extra) | {"global_step"}
    reference = synthetic_variables(TINY_ORIGINAL_CONFIG, with_pooler=False, with_nsp=True,
                                    output_embedding_name="cls/predictions/output_embeddings")
    for name, shape in model.items():
        assert values[name].shape == shape
        np.testing.assert_array_equal(values[name], reference[name])
    np.testing.assert_array_equal(values["some_counter"], 5)
    assert dtypes["some_counter"] == tf.int32
    np.testing.assert_array_equal(values[next(iter(extra))], np.ones((2, 3)))


def test_user_errors(tmp_path):
    config = TINY_ORIGINAL_CONFIG
    with pytest.raises(UserError, match="unknown dtype 'int8'"):
        write_synthetic_checkpoint(tmp_path / "a", config, dtype="int8")
    with pytest.raises(UserError, match="num_shards 0 must be between 1 and 7"):  # embeddings, 3 layers, ...
        write_synthetic_checkpoint(tmp_path / "a", config, num_shards=0)
    with pytest.raises(UserError, match="num_shards 8 must be between 1 and 7"):
        write_synthetic_checkpoint(tmp_path / "a", config, num_shards=8)
    with pytest.raises(UserError, match="clash with generated ones"):
        write_synthetic_checkpoint(tmp_path / "a", config, extra_variables={"global_step": np.zeros(())})
    with pytest.raises(UserError, match="clash with generated ones"):
        write_synthetic_checkpoint(tmp_path / "a", config,
                                   extra_variables={"bert/pooler/dense/bias/adam_m": np.zeros(32)})
    with pytest.raises(UserError, match="clashes with cls/predictions/output_bias"):
        synthetic_variables(config, output_embedding_name="cls/predictions/output_bias")
    with pytest.raises(UserError, match="lacks output_embedding_size"):
        synthetic_variables({k: v for k, v in config.items() if k != "output_embedding_size"})
    with pytest.raises(UserError, match="not a multiple of num_attention_heads"):
        synthetic_variables(dict(config, num_attention_heads=5))
    with pytest.raises(UserError, match="seed -1 is negative"):
        synthetic_variables(config, seed=-1)
    write_synthetic_checkpoint(tmp_path / "b", config, optimizer_slots=False)
    with pytest.raises(UserError, match="already holds model.ckpt-3.data-00000-of-00001"):
        write_synthetic_checkpoint(tmp_path / "b", config)


def test_command_line(tmp_path, capsys):
    config_path = tmp_path / "bert_config.json"
    config_path.write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out"), "--config", str(config_path), "--seed", "4", "--no-slots", "--shards", "2",
              "--dtype", "float16"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "model.ckpt-3")
    values, dtypes = read_all(tmp_path / "out" / "model.ckpt-3")
    assert not any(name.endswith(("adam_m", "adam_v")) for name in values)
    assert len(list((tmp_path / "out").glob("*.data-*-of-00002"))) == 2
    word = "bert/embeddings/word_embeddings"
    assert dtypes[word] == tf.float16
    np.testing.assert_array_equal(values[word], synthetic_variables(TINY_ORIGINAL_CONFIG, seed=4)[word]
                                  .astype(np.float16))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out2"), "--config", str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    assert "missing.json does not exist" in capsys.readouterr().err
