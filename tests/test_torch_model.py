"""The PyTorch reference model: shapes, losses by hand, masks, KV cache, loading and saving, and (interop)
agreement with transformers' RemBERT classes on the same state dict."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from rembert_ref.errors import UserError
from rembert_ref.config import RemBertConfig
from rembert_ref.torch_model import (
    MODEL_CLASSES,
    RemBertForCausalLM,
    RemBertForMaskedLM,
    RemBertForMultipleChoice,
    RemBertForQuestionAnswering,
    RemBertForSequenceClassification,
    RemBertForTokenClassification,
    RemBertModel,
    activation,
)
from tests.conftest import TINY_ORIGINAL_CONFIG

CONFIG = RemBertConfig.from_original(TINY_ORIGINAL_CONFIG)
# 5 labels: distinct from every other tiny size, so a classifier built on the wrong axis fails on shape.
CLS_CONFIG = dataclasses.replace(CONFIG, num_labels=5)
DECODER = dataclasses.replace(CONFIG, is_decoder=True)
CROSS = dataclasses.replace(CONFIG, is_decoder=True, add_cross_attention=True)
B, T, C, S, N_CHOICES = 2, 7, 3, 5, 3  # batch, sequence, choices, encoder length; T is not a tiny config size
L, NH, HID, V = CONFIG.num_hidden_layers, CONFIG.num_attention_heads, CONFIG.hidden_size, CONFIG.vocab_size

# Tolerance for two float32 computations of the same thing in a different operation order (KV cache vs full).
ATOL = 1e-5


def build(cls: type, config: RemBertConfig = CONFIG, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls(config).eval()


def randint(high: int, shape: tuple[int, ...], seed: int, low: int = 1) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def nll(logits: torch.Tensor, target: torch.Tensor, ignore: int = -100) -> torch.Tensor:
    """Mean negative log-likelihood over the targets that are not `ignore`, written out by hand."""
    logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    keep = target != ignore
    logp = torch.log_softmax(logits[keep], dim=-1)
    return -logp.gather(1, target[keep][:, None]).mean()


# ----------------------------------------------------------------------------------------------------------
# Shapes and outputs


@pytest.mark.parametrize(
    "cls, config, field, shape",
    [
        (RemBertModel, CONFIG, "last_hidden_state", (B, T, HID)),
        (RemBertModel, CONFIG, "pooler_output", (B, HID)),
        (RemBertForMaskedLM, CONFIG, "logits", (B, T, V)),
        (RemBertForCausalLM, DECODER, "logits", (B, T, V)),
        (RemBertForSequenceClassification, CLS_CONFIG, "logits", (B, 5)),
        (RemBertForMultipleChoice, CLS_CONFIG, "logits", (B, N_CHOICES)),
        (RemBertForTokenClassification, CLS_CONFIG, "logits", (B, T, 5)),
        (RemBertForQuestionAnswering, CLS_CONFIG, "start_logits", (B, T)),
        (RemBertForQuestionAnswering, CLS_CONFIG, "end_logits", (B, T)),
    ],
)
def test_output_shapes(cls, config, field, shape):
    model = build(cls, config)
    ids = randint(V, (B, N_CHOICES, T) if cls is RemBertForMultipleChoice else (B, T), seed=1)
    with torch.no_grad():
        out = model(ids)
    assert tuple(out[field].shape) == shape


def test_hidden_states_and_attentions():
    model = build(RemBertModel)
    ids = randint(V, (B, T), seed=2)
    types = randint(2, (B, T), seed=3, low=0)
    with torch.no_grad():
        out = model(ids, token_type_ids=types, output_hidden_states=True, output_attentions=True)
        emb = model.embeddings
        by_hand = emb.LayerNorm(
            emb.word_embeddings.weight[ids]
            + emb.position_embeddings.weight[torch.arange(T)]
            + emb.token_type_embeddings.weight[types]
        )
        by_hand = by_hand @ model.encoder.embedding_hidden_mapping_in.weight.T
        by_hand = by_hand + model.encoder.embedding_hidden_mapping_in.bias
    assert len(out.hidden_states) == L + 1
    assert all(h.shape == (B, T, HID) for h in out.hidden_states)
    # hidden_states[0] is the embedding output after the mapping up to the hidden size, as in transformers.
    torch.testing.assert_close(out.hidden_states[0], by_hand, rtol=0, atol=1e-6)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert len(out.attentions) == L
    assert all(a.shape == (B, NH, T, T) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(B, NH, T))
    assert out.cross_attentions is None and out.past_key_values is None


def test_tuple_access_and_return_dict_false():
    model = build(RemBertForSequenceClassification, CLS_CONFIG)
    ids, labels = randint(V, (B, T), seed=4), randint(5, (B,), seed=5, low=0)
    with torch.no_grad():
        out = model(ids, labels=labels)
        as_tuple = model(ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2  # None fields are left out, as in transformers
    assert torch.equal(out[0], out.loss) and torch.equal(out[1], out.logits) and torch.equal(out["logits"], out[1])
    assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
    assert len(out.to_tuple()) == 2


# ----------------------------------------------------------------------------------------------------------
# Losses against hand computations on the model's own logits


def test_masked_lm_loss():
    model = build(RemBertForMaskedLM)
    ids = randint(V, (B, T), seed=6)
    labels = randint(V, (B, T), seed=7, low=0)
    labels[0, :3] = -100
    labels[1, 5] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, nll(out.logits, labels))


def test_causal_lm_loss_is_shifted():
    model = build(RemBertForCausalLM, DECODER)
    ids = randint(V, (B, T), seed=8)
    labels = ids.clone()
    labels[1, 2] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, nll(out.logits[:, :-1], labels[:, 1:]))
    assert not torch.allclose(out.loss, nll(out.logits, labels))  # the shift matters


def test_sequence_classification_losses():
    ids = randint(V, (B, T), seed=9)
    model = build(RemBertForSequenceClassification, CLS_CONFIG)
    with torch.no_grad():
        # integer labels -> single-label cross-entropy
        labels = randint(5, (B,), seed=10, low=0)
        out = model(ids, labels=labels)
        torch.testing.assert_close(out.loss, nll(out.logits, labels))
        # float labels with several classes -> multi-label BCE with logits
        targets = randint(2, (B, 5), seed=11, low=0).float()
        out = model(ids, labels=targets)
        x = out.logits
        bce = -(targets * F.logsigmoid(x) + (1 - targets) * F.logsigmoid(-x)).mean()
        torch.testing.assert_close(out.loss, bce)
        # explicit problem_type wins over the inference: regression on 5 outputs
        reg5 = build(RemBertForSequenceClassification, dataclasses.replace(CLS_CONFIG, problem_type="regression"))
        values = randn(B, 5, seed=12)
        out = reg5(ids, labels=values)
        torch.testing.assert_close(out.loss, ((out.logits - values) ** 2).mean())
        # one label -> regression
        reg1 = build(RemBertForSequenceClassification, dataclasses.replace(CONFIG, num_labels=1))
        values = randn(B, seed=13)
        out = reg1(ids, labels=values)
        assert out.logits.shape == (B, 1)
        torch.testing.assert_close(out.loss, ((out.logits[:, 0] - values) ** 2).mean())
    bad = build(RemBertForSequenceClassification, dataclasses.replace(CLS_CONFIG, problem_type="ranking"))
    with pytest.raises(UserError, match="unknown problem_type 'ranking'"):
        bad(ids, labels=labels)


@pytest.mark.interop
def test_problem_type_is_inferred_per_call_and_not_stored():
    """The documented difference: transformers stores its first guess in the config; a model that did the same
    would turn a later call's multi-hot labels into an error, and one that forgot to infer would mislabel both."""
    transformers = pytest.importorskip("transformers")
    ours = build(RemBertForSequenceClassification, CLS_CONFIG)
    theirs = transformers.RemBertForSequenceClassification(transformers.RemBertConfig(**CLS_CONFIG.to_dict())).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids, classes = randint(V, (B, T), seed=61), randint(5, (B,), seed=62, low=0)
    multi_hot = randint(2, (B, 5), seed=63, low=0).float()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, labels=classes).loss, theirs(ids, labels=classes).loss)
        out = ours(ids, labels=multi_hot)
        assert ours.config.problem_type is None
        torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, multi_hot))
        assert theirs.config.problem_type == "single_label_classification"
        with pytest.raises(ValueError):
            theirs(ids, labels=multi_hot)
    with pytest.raises(UserError, match="no cross-attention"):
        ours.rembert(ids, encoder_hidden_states=randn(B, S, HID, seed=64))
    assert theirs.rembert(ids, encoder_hidden_states=randn(B, S, HID, seed=64)).last_hidden_state.shape == (B, T, HID)


def test_multiple_choice_loss():
    model = build(RemBertForMultipleChoice)
    ids = randint(V, (B, N_CHOICES, T), seed=14)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(ids, attention_mask=torch.ones(B, N_CHOICES, T), labels=labels)
        # each choice scored on its own by the same model
        pooled = torch.stack([model.rembert(ids[:, c]).pooler_output for c in range(N_CHOICES)], dim=1)
        scores = model.classifier(pooled)[..., 0]  # (B, N_CHOICES)
    torch.testing.assert_close(out.logits, scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, nll(out.logits, labels))


def test_token_classification_loss_ignores_minus_100():
    model = build(RemBertForTokenClassification, CLS_CONFIG)
    ids = randint(V, (B, T), seed=15)
    labels = randint(5, (B, T), seed=16, low=0)
    labels[:, 0] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, nll(out.logits, labels))


def test_question_answering_loss_clamps_positions():
    model = build(RemBertForQuestionAnswering)
    ids = randint(V, (B, T), seed=17)
    start = torch.tensor([3, 50])  # 50 lies outside the window: clamped to T and ignored, like transformers
    end = torch.tensor([[5], [6]])  # (B, 1) is accepted too
    with torch.no_grad():
        out = model(ids, start_positions=start, end_positions=end)
    expected = (nll(out.start_logits[:1], start[:1]) + nll(out.end_logits, end[:, 0])) / 2
    torch.testing.assert_close(out.loss, expected)
    assert start.tolist() == [3, 50]  # the caller's tensor is not clamped in place


# ----------------------------------------------------------------------------------------------------------
# Masks, activations, head mask


def test_attention_mask_masks():
    model = build(RemBertModel)
    ids = randint(V, (B, T), seed=18)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0
    changed = ids.clone()
    changed[0, 5:] = (ids[0, 5:] + 7) % V
    with torch.no_grad():
        a = model(ids, attention_mask=mask).last_hidden_state
        b = model(changed, attention_mask=mask).last_hidden_state
        c = model(changed).last_hidden_state  # no mask: the change must reach the other positions
    torch.testing.assert_close(a[0, :5], b[0, :5], rtol=0, atol=1e-6)
    assert torch.equal(a[1], b[1])
    assert (a[0, :5] - c[0, :5]).abs().max() > 1e-3


def test_decoder_is_causal_and_encoder_is_not():
    ids = randint(V, (B, T), seed=19)
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % V
    with torch.no_grad():
        dec = build(RemBertForCausalLM, DECODER)
        torch.testing.assert_close(dec(ids).logits[:, :-1], dec(changed).logits[:, :-1], rtol=0, atol=1e-6)
        enc = build(RemBertForMaskedLM)
        assert (enc(ids).logits[:, :-1] - enc(changed).logits[:, :-1]).abs().max() > 1e-4


def test_head_mask():
    model = build(RemBertModel)
    ids = randint(V, (B, T), seed=20)
    head_mask = torch.ones(L, NH)
    head_mask[1, 2] = 0
    with torch.no_grad():
        plain = model(ids, output_attentions=True)
        ones = model(ids, head_mask=torch.ones(NH), output_attentions=True)
        masked = model(ids, head_mask=head_mask, output_attentions=True)
    torch.testing.assert_close(ones.last_hidden_state, plain.last_hidden_state, rtol=0, atol=0)
    assert torch.count_nonzero(masked.attentions[1][:, 2]) == 0
    assert torch.count_nonzero(masked.attentions[1][:, 1]) > 0
    assert (masked.last_hidden_state - plain.last_hidden_state).abs().max() > 1e-4


def test_activations():
    x = torch.linspace(-4, 4, 101)
    tf1_gelu = 0.5 * x * (1.0 + torch.tanh(((2 / torch.pi) ** 0.5) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(activation("gelu_new")(x), tf1_gelu, rtol=0, atol=1e-6)
    exact = x * 0.5 * (1.0 + torch.erf(x / 2**0.5))
    torch.testing.assert_close(activation("gelu")(x), exact, rtol=0, atol=1e-6)
    assert (activation("gelu")(x) - activation("gelu_new")(x)).abs().max() > 1e-5  # the choice is visible
    assert torch.equal(activation("relu")(x), x.clamp(min=0))
    with pytest.raises(UserError, match="unknown hidden_act 'swish'"):
        activation("swish")
    ids = randint(V, (B, T), seed=21)
    outs = [build(RemBertModel, dataclasses.replace(CONFIG, hidden_act=a))(ids)[0] for a in ("gelu_new", "relu")]
    assert (outs[0] - outs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("cls", [RemBertForMaskedLM, RemBertForSequenceClassification])
def test_fresh_model_initialisation(cls):
    model = build(cls)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(param) == 0, name
        elif "LayerNorm" in name:
            assert torch.equal(param, torch.ones_like(param)), name
        else:  # normal(0, initializer_range); the smallest matrix (token types) has 36 entries
            assert 0.01 < param.std().item() < 0.03, name
    word = model.rembert.embeddings.word_embeddings.weight
    assert torch.count_nonzero(word[CONFIG.pad_token_id]) == 0 and torch.count_nonzero(word[1]) > 0


def test_config_errors():
    with pytest.raises(UserError, match="is_decoder=True"):
        RemBertForCausalLM(CONFIG)
    with pytest.raises(UserError, match="add_cross_attention needs is_decoder=True"):
        RemBertModel(dataclasses.replace(CONFIG, add_cross_attention=True))
    with pytest.raises(UserError, match="no cross-attention"):
        build(RemBertModel, DECODER)(randint(V, (B, T), seed=0), encoder_hidden_states=randn(B, S, HID, seed=0))
    with pytest.raises(UserError, match="exactly one of input_ids and inputs_embeds"):
        build(RemBertModel)()


# ----------------------------------------------------------------------------------------------------------
# KV cache


def _incremental(model, ids, splits, **kwargs):
    """Logits for `ids` fed in pieces (prefix, then the rest in the sizes `splits`), carrying the cache."""
    logits, past, start = [], None, 0
    for size in splits:
        piece = ids[:, start : start + size]
        out = model(piece, past_key_values=past, use_cache=True, **kwargs)
        logits.append(out.logits)
        past, start = out.past_key_values, start + size
    assert start == ids.shape[1]
    return torch.cat(logits, dim=1), past


def test_kv_cache_matches_full_sequence():
    model = build(RemBertForCausalLM, DECODER)
    ids = randint(V, (B, T), seed=22)
    with torch.no_grad():
        full = model(ids, use_cache=False)
        steps, past = _incremental(model, ids, [4, 1, 2])
    assert full.past_key_values is None
    torch.testing.assert_close(steps, full.logits, rtol=0, atol=ATOL)
    assert len(past) == L and all(len(p) == 2 for p in past)
    assert all(t.shape == (B, NH, T, CONFIG.head_size) for p in past for t in p)


def test_kv_cache_with_cross_attention():
    model = build(RemBertForCausalLM, CROSS)
    ids = randint(V, (B, T), seed=23)
    enc = randn(B, S, HID, seed=24)
    enc_mask = torch.ones(B, S, dtype=torch.long)
    enc_mask[1, 3:] = 0
    kwargs = {"encoder_hidden_states": enc, "encoder_attention_mask": enc_mask}
    with torch.no_grad():
        full = model(ids, use_cache=False, output_attentions=True, **kwargs)
        steps, past = _incremental(model, ids, [3, 1, 1, 1, 1], **kwargs)
        # the padded encoder positions are masked: changing them changes nothing
        enc_changed = enc.clone()
        enc_changed[1, 3:] += 1.0
        other = model(ids, encoder_hidden_states=enc_changed, encoder_attention_mask=enc_mask)
        no_cross = model(ids)
    torch.testing.assert_close(steps, full.logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(other.logits, full.logits, rtol=0, atol=1e-6)
    assert (no_cross.logits - full.logits).abs().max() > 1e-4  # the cross-attention is used
    assert all(len(p) == 4 for p in past)
    assert past[0][0].shape == (B, NH, T, CONFIG.head_size) and past[0][2].shape == (B, NH, S, CONFIG.head_size)
    assert len(full.cross_attentions) == L and full.cross_attentions[0].shape == (B, NH, T, S)


def test_kv_cache_with_padding_mask():
    model = build(RemBertForCausalLM, DECODER)
    ids = randint(V, (B, T), seed=25)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 1] = 0  # a masked position inside the cached prefix
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        prefix = model(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
        rest = model(ids[:, 4:], attention_mask=mask, past_key_values=prefix.past_key_values).logits
    torch.testing.assert_close(torch.cat([prefix.logits, rest], dim=1), full, rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------------------------------------
# Saving and loading


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.last_hidden_state if isinstance(model, RemBertModel) else out[0]


def test_save_and_load_round_trip(tmp_path):
    model = build(RemBertForMaskedLM)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert sorted(handle.keys()) == sorted(model.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["RemBertForMaskedLM"] and config["model_type"] == "rembert"

    loaded = RemBertForMaskedLM.from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.loading_info["missing"] == loaded.loading_info["unexpected"] == []
    assert loaded.loading_info["newly_initialized"] == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = randint(V, (B, T), seed=26)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_bare_layout_loads_into_head_and_head_into_bare(tmp_path):
    base = build(RemBertModel)
    base.save_pretrained(tmp_path / "bare")
    with safe_open(tmp_path / "bare" / "model.safetensors", "pt") as handle:
        assert "embeddings.word_embeddings.weight" in set(handle.keys())  # really the bare layout

    torch.manual_seed(123)
    clf = RemBertForSequenceClassification.from_pretrained(tmp_path / "bare", config=CLS_CONFIG)
    assert clf.loading_info["newly_initialized"] == ["classifier.bias", "classifier.weight"]
    assert clf.loading_info["missing"] == clf.loading_info["unexpected"] == []
    ids = randint(V, (B, T), seed=27)
    torch.testing.assert_close(_logits(clf.rembert, ids), _logits(base, ids), rtol=0, atol=0)
    assert torch.count_nonzero(clf.classifier.bias) == 0
    assert 0.005 < clf.classifier.weight.std().item() < 0.04  # normal(0, initializer_range=0.02), 160 draws
    torch.manual_seed(123)
    again = RemBertForSequenceClassification.from_pretrained(tmp_path / "bare", config=CLS_CONFIG)
    assert torch.equal(again.classifier.weight, clf.classifier.weight)  # seeded by the caller
    torch.manual_seed(124)
    other = RemBertForSequenceClassification.from_pretrained(tmp_path / "bare", config=CLS_CONFIG)
    assert not torch.equal(other.classifier.weight, clf.classifier.weight)

    clf.save_pretrained(tmp_path / "prefixed")
    back = RemBertModel.from_pretrained(tmp_path / "prefixed")
    assert back.loading_info["unexpected"] == ["classifier.bias", "classifier.weight"]
    assert back.loading_info["missing"] == back.loading_info["newly_initialized"] == []
    torch.testing.assert_close(_logits(back, ids), _logits(base, ids), rtol=0, atol=0)


def _pretraining_dir(tmp_path) -> tuple[str, RemBertModel, RemBertForMaskedLM]:
    """A directory like a converted original checkpoint: backbone with pooler, plus the MLM head."""
    base, mlm = build(RemBertModel), build(RemBertForMaskedLM, seed=1)
    mlm.rembert.load_state_dict(base.state_dict(), strict=False)
    state = {f"rembert.{k}": v for k, v in base.state_dict().items()}
    state.update({k: v for k, v in mlm.state_dict().items() if k.startswith("cls.")})
    directory = tmp_path / "pretraining"
    directory.mkdir()
    CONFIG.save(directory / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors", {"format": "pt"})
    return directory, base, mlm


def test_other_heads_are_unused_not_errors(tmp_path):
    directory, base, mlm = _pretraining_dir(tmp_path)
    ids = randint(V, (B, T), seed=28)
    loaded_mlm = RemBertForMaskedLM.from_pretrained(directory)
    assert loaded_mlm.loading_info["unexpected"] == ["rembert.pooler.dense.bias", "rembert.pooler.dense.weight"]
    assert torch.equal(_logits(loaded_mlm, ids), _logits(mlm, ids))
    loaded_base = RemBertModel.from_pretrained(directory)
    assert loaded_base.loading_info["unexpected"] == sorted(k for k in mlm.state_dict() if k.startswith("cls."))
    assert torch.equal(_logits(loaded_base, ids), _logits(base, ids))
    # A decoder built from the encoder: the new cross-attention starts fresh, the rest is loaded.
    causal = RemBertForCausalLM.from_pretrained(directory, config=CROSS)
    new = causal.loading_info["newly_initialized"]
    assert len(new) == L * 10 and all(".crossattention." in k for k in new)
    # Fresh like _init_weights: a LayerNorm that starts as anything but the identity skews the first steps.
    fresh = {k: v for k, v in causal.named_parameters() if k in new}
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in fresh.items() if k.endswith("LayerNorm.weight"))
    assert all(torch.count_nonzero(v) == 0 for k, v in fresh.items() if k.endswith("bias"))


def test_sharded_index(tmp_path):
    directory, _, mlm = _pretraining_dir(tmp_path)
    state = {k: v.contiguous() for k, v in mlm.state_dict().items()}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    CONFIG.save(sharded / "config.json")
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, sharded / shard, {"format": "pt"})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = RemBertForMaskedLM.from_pretrained(sharded)
    assert loaded.loading_info["weights_file"] == ["model.safetensors.index.json"]
    ids = randint(V, (B, T), seed=29)
    assert torch.equal(_logits(loaded, ids), _logits(mlm, ids))

    moved = names[1]  # stored in shard 2, but the index now says shard 1
    weight_map[moved] = "model-00001-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(UserError, match=f"model-00001-of-00002.safetensors lacks {moved}, which its index"):
        RemBertForMaskedLM.from_pretrained(sharded)
    os.remove(sharded / "model-00002-of-00002.safetensors")
    with pytest.raises(UserError, match="names shard model-00002-of-00002.safetensors, which is not in"):
        RemBertForMaskedLM.from_pretrained(sharded)


def test_pytorch_bin_and_preference(tmp_path):
    mlm = build(RemBertForMaskedLM)
    CONFIG.save(tmp_path / "config.json")
    state = dict(mlm.state_dict())
    state["rembert.embeddings.position_ids"] = torch.arange(CONFIG.max_position_embeddings)[None]  # old HF files
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = RemBertForMaskedLM.from_pretrained(tmp_path)
    assert loaded.loading_info["weights_file"] == ["pytorch_model.bin"]
    assert loaded.loading_info["unexpected"] == []
    ids = randint(V, (B, T), seed=30)
    assert torch.equal(_logits(loaded, ids), _logits(mlm, ids))
    # With both present, model.safetensors is read (deterministic choice, recorded).
    build(RemBertForMaskedLM, seed=7).save_pretrained(tmp_path)
    both = RemBertForMaskedLM.from_pretrained(tmp_path)
    assert both.loading_info["weights_file"] == ["model.safetensors"]
    assert not torch.equal(_logits(both, ids), _logits(mlm, ids))


def test_missing_weights_are_errors(tmp_path):
    directory, _, _ = _pretraining_dir(tmp_path)
    path = directory / "model.safetensors"
    from safetensors.torch import load_file

    state = load_file(path)
    del state["rembert.encoder.layer.1.attention.self.key.weight"]
    del state["cls.predictions.decoder.bias"]
    save_file(state, path, {"format": "pt"})
    with pytest.raises(UserError) as info:
        RemBertForMaskedLM.from_pretrained(directory)
    message = str(info.value)
    assert "rembert.encoder.layer.1.attention.self.key.weight" in message
    assert "cls.predictions.decoder.bias" in message and "strict_backbone=False" in message
    assert "\n" not in message
    # The base model does not need the MLM head, only the backbone weight.
    with pytest.raises(UserError, match="lacks 1 weight") as info:
        RemBertModel.from_pretrained(directory)
    assert "encoder.layer.1.attention.self.key.weight" in str(info.value)

    loose = RemBertForMaskedLM.from_pretrained(directory, strict_backbone=False)
    assert loose.loading_info["missing"] == [
        "cls.predictions.decoder.bias",
        "rembert.encoder.layer.1.attention.self.key.weight",
    ]
    assert torch.count_nonzero(loose.cls.predictions.decoder.bias) == 0


def test_a_missing_word_embedding_starts_with_a_zero_padding_row(tmp_path):
    """strict_backbone=False initialises what is missing as _init_weights would, padding row included."""
    directory, _, _ = _pretraining_dir(tmp_path)
    from safetensors.torch import load_file

    state = load_file(directory / "model.safetensors")
    del state["rembert.embeddings.word_embeddings.weight"]
    save_file(state, directory / "model.safetensors", {"format": "pt"})
    torch.manual_seed(0)
    loose = RemBertForMaskedLM.from_pretrained(directory, strict_backbone=False)
    assert loose.loading_info["missing"] == ["rembert.embeddings.word_embeddings.weight"]
    word = loose.rembert.embeddings.word_embeddings.weight
    assert torch.count_nonzero(word[CONFIG.pad_token_id]) == 0 and torch.count_nonzero(word[1]) > 0


def test_loading_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RemBertModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UserError, match="config.json does not exist"):
        RemBertModel.from_pretrained(tmp_path)
    CONFIG.save(tmp_path / "config.json")
    with pytest.raises(UserError, match="has none of model.safetensors"):
        RemBertModel.from_pretrained(tmp_path)
    build(RemBertModel).save_pretrained(tmp_path)
    wrong = dataclasses.replace(CONFIG, intermediate_size=41)
    with pytest.raises(UserError, match=r"intermediate.dense.weight: file \(37, 32\), model \(41, 32\)"):
        RemBertModel.from_pretrained(tmp_path, config=wrong)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot read weights file"):
        RemBertModel.from_pretrained(tmp_path)


def test_all_classes_listed():
    """MODEL_CLASSES, the list loaders and tests use, holds every model class the module defines."""
    import rembert_ref.torch_model as module

    defined = {name for name, value in vars(module).items() if isinstance(value, type)
               and issubclass(value, module.RemBertPreTrainedModel) and value is not module.RemBertPreTrainedModel}
    assert set(MODEL_CLASSES) == defined
    assert set(INTEROP_CASES) == defined  # every head is compared with transformers


# ----------------------------------------------------------------------------------------------------------
# Interop with transformers: the same state dict gives the same outputs.

INTEROP_CASES = {
    "RemBertModel": CONFIG,
    "RemBertForMaskedLM": CONFIG,
    "RemBertForCausalLM": CROSS,
    "RemBertForSequenceClassification": CLS_CONFIG,
    "RemBertForMultipleChoice": CLS_CONFIG,
    "RemBertForTokenClassification": CLS_CONFIG,
    "RemBertForQuestionAnswering": CONFIG,
}
# transformers' "gelu_new" writes the tanh formula out; ours is torch's fused kernel: float32 rounding apart.
INTEROP_ATOL = 1e-5


def _inputs(name: str) -> dict[str, torch.Tensor]:
    shape = (B, N_CHOICES, T) if name == "RemBertForMultipleChoice" else (B, T)
    mask = torch.ones(shape, dtype=torch.long)
    mask[0, ..., -2:] = 0
    inputs = {
        "input_ids": randint(V, shape, seed=31),
        "token_type_ids": randint(2, shape, seed=32, low=0),
        "attention_mask": mask,
    }
    if name == "RemBertForCausalLM":
        inputs["encoder_hidden_states"] = randn(B, S, HID, seed=33)
        inputs["encoder_attention_mask"] = torch.tensor([[1] * S, [1] * (S - 2) + [0, 0]])
        inputs["labels"] = inputs["input_ids"].clone()
    elif name == "RemBertForMaskedLM":
        inputs["labels"] = randint(V, shape, seed=34, low=0)
    elif name == "RemBertForSequenceClassification":
        inputs["labels"] = randint(5, (B,), seed=35, low=0)
    elif name == "RemBertForMultipleChoice":
        inputs["labels"] = randint(N_CHOICES, (B,), seed=36, low=0)
    elif name == "RemBertForTokenClassification":
        inputs["labels"] = randint(5, shape, seed=37, low=0)
    elif name == "RemBertForQuestionAnswering":
        inputs["start_positions"], inputs["end_positions"] = torch.tensor([1, 40]), torch.tensor([3, 6])
    return inputs


def _twins(name: str, config: RemBertConfig, seed: int = 40) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our `name` and transformers' on one state dict, both in eval mode."""
    transformers = pytest.importorskip("transformers")
    ours = build(MODEL_CLASSES[name], config, seed=seed)
    # Non-zero LayerNorm and bias values, so a swapped or dropped bias cannot hide behind the zero init.
    with torch.no_grad():
        for param_name, param in ours.named_parameters():
            if param_name.endswith("bias") or "LayerNorm" in param_name:
                param.add_(0.1 * randn(*param.shape, seed=len(param_name)))
    theirs = getattr(transformers, name)(transformers.RemBertConfig(**config.to_dict())).eval()
    result = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours, theirs


COMPARED_FIELDS = ["loss", "logits", "start_logits", "end_logits", "last_hidden_state", "pooler_output"]


def _assert_same_outputs(a, b, atol: float = INTEROP_ATOL) -> int:
    """Every output field and hidden state / attention group either side has, equal; returns the field count."""
    compared = 0
    for field in COMPARED_FIELDS:
        if getattr(a, field, None) is not None or getattr(b, field, None) is not None:
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=atol)
            compared += 1
    for group in ("hidden_states", "attentions", "cross_attentions"):
        ours_group, theirs_group = getattr(a, group, None), getattr(b, group, None)
        if ours_group is None and theirs_group is None:
            continue
        assert len(ours_group) == len(theirs_group)
        for x, y in zip(ours_group, theirs_group, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=atol)
    return compared


@pytest.mark.interop
@pytest.mark.parametrize("name", list(INTEROP_CASES))
def test_interop_with_transformers(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = INTEROP_CASES[name]
    ours, theirs = _twins(name, config)

    inputs = _inputs(name)
    with torch.no_grad():
        a = ours(**inputs, output_hidden_states=True, output_attentions=True)
        b = theirs(**inputs, output_hidden_states=True, output_attentions=True)
    fields = COMPARED_FIELDS
    assert _assert_same_outputs(a, b) >= 2  # a loss and at least one output

    # Files travel both ways: ours load in transformers, theirs load in ours.
    ours.save_pretrained(tmp_path / "ours")
    reloaded_theirs = getattr(transformers, name).from_pretrained(tmp_path / "ours").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    reloaded_ours = MODEL_CLASSES[name].from_pretrained(tmp_path / "theirs", config=config)
    assert reloaded_ours.loading_info["missing"] == reloaded_ours.loading_info["newly_initialized"] == []
    key = fields[4] if name == "RemBertModel" else ("start_logits" if "Question" in name else "logits")
    inputs = {k: v for k, v in inputs.items() if "positions" not in k and k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded_theirs(**inputs)[key], a[key], rtol=0, atol=INTEROP_ATOL)
        torch.testing.assert_close(reloaded_ours(**inputs)[key], a[key], rtol=0, atol=INTEROP_ATOL)


@pytest.mark.interop
@pytest.mark.parametrize(("config", "pooler"), [(DECODER, True), (CONFIG, False)])
def test_base_model_tuple_is_laid_out_as_in_transformers(config, pooler):
    """return_dict=False: transformers keeps the pooler's place (None without one) and puts the cache before the
    hidden states (the encoder's order), unlike its ModelOutput's field order."""
    transformers = pytest.importorskip("transformers")
    ours = RemBertModel(config, add_pooling_layer=pooler).eval()
    theirs = transformers.RemBertModel(transformers.RemBertConfig(**config.to_dict()), add_pooling_layer=pooler).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = randint(V, (B, T), seed=41)
    with torch.no_grad():
        a = ours(ids, return_dict=False, output_hidden_states=True, use_cache=config.is_decoder)
        b = theirs(ids, return_dict=False, output_hidden_states=True, use_cache=config.is_decoder)
    assert len(a) == len(b) and (a[1] is None) == (b[1] is None) == (not pooler)
    hidden = len(a) - 1  # the hidden states come last, after the cache if there is one
    assert len(a[hidden]) == len(b[hidden]) == L + 1
    for x, y in zip(a[hidden], b[hidden], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=INTEROP_ATOL)


@pytest.mark.interop
def test_save_pretrained_records_the_weights_dtype(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = build(RemBertForMaskedLM).half()
    model.save_pretrained(tmp_path / "half")
    assert json.loads((tmp_path / "half" / "config.json").read_text())["torch_dtype"] == "float16"
    reloaded = transformers.RemBertForMaskedLM.from_pretrained(tmp_path / "half", torch_dtype="auto")
    assert reloaded.dtype == torch.float16


def _edge_inputs(case: str) -> dict[str, torch.Tensor]:
    """Inputs on paths the main interop comparison does not take."""
    ids = randint(V, (B, T), seed=50)
    if case == "all_masked_row":
        mask = torch.ones(B, T, dtype=torch.long)
        mask[0] = 0  # the dtype minimum flattens this row's scores; -10000 would not
        return {"input_ids": ids, "attention_mask": mask}
    if case == "3d_attention_mask":
        mask = randint(2, (B, T, T), seed=51, low=0)
        mask[:, range(T), range(T)] = 1  # not symmetric, so a transposed mask gives other outputs
        return {"input_ids": ids, "attention_mask": mask}
    enc = randn(B, S, HID, seed=52)
    if case == "cross_attention_head_mask_and_3d_encoder_mask":
        enc_mask = randint(2, (B, T, S), seed=53, low=0)
        enc_mask[..., 0] = 1
        head_mask = torch.ones(L, NH)
        head_mask[0, 1] = head_mask[2, 3] = 0
        return {"input_ids": ids, "encoder_hidden_states": enc, "encoder_attention_mask": enc_mask,
                "head_mask": head_mask, "labels": ids}
    if case == "cross_attention_without_encoder_mask":
        return {"input_ids": ids, "encoder_hidden_states": enc}
    if case == "start_positions_only":
        return {"input_ids": ids, "start_positions": torch.tensor([2, 4])}
    if case == "question_answering_batch_of_one":
        return {"input_ids": ids[:1], "start_positions": torch.tensor([3]), "end_positions": torch.tensor([[5]])}
    if case == "multiple_choice_inputs_embeds_and_position_ids":
        return {"inputs_embeds": randn(B, N_CHOICES, T, CONFIG.input_embedding_size, seed=54),
                "position_ids": randint(CONFIG.max_position_embeddings, (B, N_CHOICES, T), seed=55, low=0),
                "token_type_ids": randint(2, (B, N_CHOICES, T), seed=56, low=0),
                "labels": torch.tensor([1, 2])}
    raise AssertionError(case)


EDGE_CASES = {
    "all_masked_row": ("RemBertModel", CONFIG),
    "3d_attention_mask": ("RemBertModel", CONFIG),
    "cross_attention_head_mask_and_3d_encoder_mask": ("RemBertForCausalLM", CROSS),
    "cross_attention_without_encoder_mask": ("RemBertForCausalLM", CROSS),
    "start_positions_only": ("RemBertForQuestionAnswering", CONFIG),
    "question_answering_batch_of_one": ("RemBertForQuestionAnswering", CONFIG),
    "multiple_choice_inputs_embeds_and_position_ids": ("RemBertForMultipleChoice", CLS_CONFIG),
}


@pytest.mark.interop
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_inputs_match_transformers(case):
    """Defaults, 3-D masks, head masks in cross-attention, inputs_embeds per choice: each computed as transformers
    does, or a caller relying on them gets other numbers than with transformers' classes."""
    name, config = EDGE_CASES[case]
    ours, theirs = _twins(name, config)
    inputs = _edge_inputs(case)
    with torch.no_grad():
        a = ours(**inputs, output_hidden_states=True, output_attentions=True)
        b = theirs(**inputs, output_hidden_states=True, output_attentions=True)
    assert _assert_same_outputs(a, b) >= 1


@pytest.mark.interop
@pytest.mark.parametrize("hidden_act", ["tanh", "gelu_pytorch_tanh"])
def test_other_activations_match_transformers(hidden_act):
    """A hidden_act name read with another meaning than transformers' ACT2FN gives it changes every output."""
    ours, theirs = _twins("RemBertForMaskedLM", dataclasses.replace(CONFIG, hidden_act=hidden_act))
    ids = randint(V, (B, T), seed=57)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=INTEROP_ATOL)


@pytest.mark.interop
@pytest.mark.parametrize("name", list(INTEROP_CASES))
def test_train_mode_dropout_matches_transformers(name):
    """Dropout at another place, or with another of the three probabilities, would train a different model."""
    config = dataclasses.replace(INTEROP_CASES[name], hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2,
                                 classifier_dropout_prob=0.3)  # distinct, so a swapped probability shows
    ours, theirs = _twins(name, config)
    inputs = _inputs(name)
    outs = []
    for model in (ours.train(), theirs.train()):
        torch.manual_seed(60)  # the same masks, as both draw them in the same order and shapes
        with torch.no_grad():
            outs.append(model(**inputs, output_hidden_states=True))
    _assert_same_outputs(*outs)
    with torch.no_grad():
        evaluated = ours.eval()(**inputs, output_hidden_states=True)
    assert (evaluated.hidden_states[-1] - outs[0].hidden_states[-1]).abs().max() > 1e-3  # dropout was on


@pytest.mark.interop
@pytest.mark.parametrize("config", [DECODER, dataclasses.replace(DECODER, use_cache=False), CONFIG],
                         ids=["decoder", "decoder_use_cache_false", "encoder"])
def test_cache_is_returned_by_default_when_transformers_returns_it(config):
    """A decoder called without use_cache follows config.use_cache; an encoder never returns a cache."""
    transformers = pytest.importorskip("transformers")
    ours = RemBertModel(config).eval()
    theirs = transformers.RemBertModel(transformers.RemBertConfig(**config.to_dict())).eval()
    ids = randint(V, (B, T), seed=58)
    with torch.no_grad():
        a, b = ours(ids), theirs(ids)
    assert (a.past_key_values is None) == (b.past_key_values is None)
    if a.past_key_values is not None:
        assert len(a.past_key_values) == L and a.past_key_values[0][0].shape == (B, NH, T, CONFIG.head_size)


@pytest.mark.interop
def test_bfloat16_causal_lm_matches_transformers():
    """In bfloat16 the masks take the model's dtype and the loss is computed in float32, as in transformers."""
    ours, theirs = _twins("RemBertForCausalLM", DECODER)
    ours, theirs = ours.to(torch.bfloat16), theirs.to(torch.bfloat16)
    ids = randint(V, (B, T), seed=59)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, -3:] = 0
    labels = ids.clone()
    labels[0, -3:] = -100
    head_mask = torch.ones(NH)  # float32, as callers write it: a float32 factor would promote the attention
    head_mask[1] = 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, labels=labels, head_mask=head_mask)
        b = theirs(ids, attention_mask=mask, labels=labels, head_mask=head_mask)
    assert a.logits.dtype == b.logits.dtype == torch.bfloat16
    assert a.loss.dtype == b.loss.dtype == torch.float32
    # bfloat16 keeps 8 bits: the two implementations round a few intermediate values differently, by an ulp
    # or two at the logits' scale (about 0.1); a wrong mask or an unshifted loss moves them far more.
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=2**-7)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=2**-7)


def test_multi_label_loss_is_exact_for_confident_logits():
    """A loss taken on sigmoid outputs saturates past |logit| ~ 17 and caps log(0) at -100, so a confidently
    wrong label would cost less than its margin; BCE on the logits (log-sigmoid) does not."""
    model = build(RemBertForSequenceClassification, CLS_CONFIG)
    ids = randint(V, (B, T), seed=65)
    targets = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([150.0, -150.0, 40.0, -40.0, 0.0]))
        out = model(ids, labels=targets)
    x = out.logits
    by_hand = -(targets * F.logsigmoid(x) + (1 - targets) * F.logsigmoid(-x)).mean()
    assert by_hand > 30  # the four confident mistakes (margins 150, 150, 40, 40 over 10 entries) dominate
    torch.testing.assert_close(out.loss, by_hand)
