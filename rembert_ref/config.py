"""RemBertConfig: the Hugging Face compatible `config.json`, and the translation from Google's `bert_config.json`.

The field names and defaults follow `transformers.RemBertConfig`, so a `config.json` written here loads in
transformers unchanged and one written by transformers loads here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from rembert_ref.errors import UserError

# BERT's TF1 code defines `gelu` as the tanh approximation; Hugging Face's "gelu" is the exact erf form.
ACTIVATION_TO_HF = {"tanh": "gelu_new", "exact": "gelu"}
ACTIVATION_FROM_HF = {hf: option for option, hf in ACTIVATION_TO_HF.items()}  # hidden_act -> --activation
# The hidden_act values a conversion writes and verify proves, in words for reports, messages and cards.
ACTIVATION_MEANING = {"gelu_new": "tanh approximation, TF1 BERT's gelu", "gelu": "exact erf gelu"}

ORIGINAL_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "output_embedding_size",
)


@dataclass
class RemBertConfig:
    vocab_size: int = 250300
    hidden_size: int = 1152
    num_hidden_layers: int = 32
    num_attention_heads: int = 18
    input_embedding_size: int = 256  # word/position/type embeddings, mapped up to hidden_size
    output_embedding_size: int = 1664  # the decoupled output embedding of the MLM head
    intermediate_size: int = 4608
    hidden_act: str = "gelu_new"  # "gelu_new" = tanh approximation (TF1 BERT), "gelu" = exact erf
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12  # tf.contrib.layers.layer_norm's epsilon
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = 312
    eos_token_id: int | None = 313
    tie_word_embeddings: bool = False
    num_labels: int = 2
    problem_type: str | None = None  # "regression" | "single_label_classification" | "multi_label_classification"
    architectures: list[str] = field(default_factory=lambda: ["RemBertForMaskedLM"])
    torch_dtype: str = "float32"
    # Keys we do not model (id2label, task_specific_params, ...) survive a load/save round trip.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A config is an input like any other: a wrong type or an absurd size is one line, not a crash later.
        for name, high in SIZE_LIMITS.items():
            _check_whole(name, getattr(self, name), high)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob",
                     "initializer_range", "layer_norm_eps"):
            _check_number(name, getattr(self, name))
        if not isinstance(self.hidden_act, str):
            raise UserError(f"config: hidden_act must be a string, not {self.hidden_act!r}; fix the config")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}; fix the config"
            )

    def set_labels(self, labels: list[str] | None) -> None:
        """id2label / label2id for the task head: the given names, one per output, or LABEL_i."""
        if labels is None:
            labels = [f"LABEL_{i}" for i in range(self.num_labels)]
        if len(labels) != self.num_labels:
            raise UserError(f"{len(labels)} label(s) given but the head has {self.num_labels} output(s); "
                            f"give one label per output")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise UserError(f"label(s) {', '.join(repeated)} given twice; label names must be distinct")
        self.extra["id2label"] = {str(i): label for i, label in enumerate(labels)}
        self.extra["label2id"] = {label: i for i, label in enumerate(labels)}

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # -- Hugging Face config.json -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        values = {**self.extra, **values, "model_type": "rembert"}
        if "dtype" in self.extra:  # transformers' newer name (4.56 on; 5.x reads it first): one dtype under both
            values["dtype"] = self.torch_dtype
        # num_labels is stored as id2label (as transformers does); a label map of another size is stale.
        if len(values.get("id2label") or {}) != self.num_labels:
            values["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            values["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        values.pop("num_labels")
        return dict(sorted(values.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RemBertConfig:
        values = dict(values)
        model_type = values.pop("model_type", "rembert")
        if model_type != "rembert":
            raise UserError(f"config has model_type {model_type!r}, expected 'rembert'")
        if "torch_dtype" not in values and isinstance(values.get("dtype"), str):  # saved by transformers 4.56+
            values["torch_dtype"] = values["dtype"]
        if "id2label" in values and "num_labels" not in values:
            values["num_labels"] = len(values["id2label"])
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in values.items() if k in known}
        extra = {k: v for k, v in values.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RemBertConfig:
        return cls.from_dict(read_json(path))

    # -- Google's original bert_config.json ---------------------------------------------------------

    @classmethod
    def from_original(cls, values: dict[str, Any], activation: str = "tanh") -> RemBertConfig:
        """Translate the original `bert_config.json`; `activation` picks tanh (TF1's gelu) or exact erf."""
        values = dict(values)
        if "input_embedding_size" not in values and "embedding_size" in values:
            values["input_embedding_size"] = values["embedding_size"]
        # Only the MLM head uses output_embedding_size; fine-tuned exports such as BLEURT's may leave it out.
        # Without it the MLM head's variables fail the shape check by name, so nothing is guessed silently.
        values.setdefault("output_embedding_size", values.get("input_embedding_size", 0))
        missing = [k for k in (*ORIGINAL_REQUIRED_KEYS, "input_embedding_size") if k not in values]
        if missing == ["input_embedding_size"]:  # every BERT size but RemBERT's own: most likely a BERT model
            raise UserError(
                "original config lacks input_embedding_size, which every RemBERT bert_config.json has: add it "
                "(embedding_size is accepted for it), or, for a BERT checkpoint (older BLEURT checkpoints are BERT), "
                "use transformers' BERT conversion instead"
            )
        if missing:
            raise UserError(
                f"original config lacks {', '.join(missing)}; add them to bert_config.json "
                "(embedding_size is accepted for input_embedding_size)"
            )
        if activation not in ACTIVATION_TO_HF:
            raise UserError(f"unknown activation {activation!r}; use one of: {', '.join(ACTIVATION_TO_HF)}")
        act = values.get("hidden_act", "gelu")
        if act != "gelu":
            raise UserError(
                f"original config has hidden_act {act!r}; only 'gelu' RemBERT checkpoints are supported"
            )
        sizes = {name: _check_whole(name, values[name], SIZE_LIMITS[name])
                 for name in (*ORIGINAL_REQUIRED_KEYS, "input_embedding_size")}
        numbers = {name: float(_check_number(name, values.get(name, default))) for name, default in
                   (("hidden_dropout_prob", 0.0), ("attention_probs_dropout_prob", 0.0), ("initializer_range", 0.02))}
        return cls(**sizes, **numbers, hidden_act=ACTIVATION_TO_HF[activation])

    @classmethod
    def from_original_json_file(cls, path: str | os.PathLike, activation: str = "tanh") -> RemBertConfig:
        return cls.from_original(read_json(path), activation=activation)


# Sizes are whole numbers in [1, limit]: far above any RemBERT (32 layers, vocabulary 250,300), low enough
# that a corrupt value cannot make the converter loop or allocate without end.
SIZE_LIMITS = {"vocab_size": 2**31 - 1, "hidden_size": 2**31 - 1, "num_hidden_layers": 1024,
               "num_attention_heads": 2**31 - 1, "input_embedding_size": 2**31 - 1,
               "output_embedding_size": 2**31 - 1, "intermediate_size": 2**31 - 1,
               "max_position_embeddings": 2**31 - 1, "type_vocab_size": 2**31 - 1, "num_labels": 2**31 - 1}


def _check_whole(name: str, value: Any, high: int) -> int:
    whole = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not whole or not 1 <= value <= high:
        raise UserError(f"config: {name} must be a whole number from 1 to {high}, not {value!r}; fix the config")
    return int(value)


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise UserError(f"config: {name} must be a finite number, not {value!r}; fix the config")
    return value


def is_original_config(values: dict[str, Any]) -> bool:
    """Google's bert_config.json has no model_type; a Hugging Face config.json always has one."""
    return "model_type" not in values


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a config-like file; a missing, unreadable or non-object file is one UserError."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; pass the checkpoint's bert_config.json "
                        "with --config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid JSON ({exc}); fix or replace it") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    return values
