"""Model outputs shared by the PyTorch and TF2 reference models: dataclasses with transformers' field names.

They behave as transformers' ModelOutput (an ordered dict of the fields that are not None): `out.logits`;
`out["logits"]` (a KeyError for a field that is None); `out[0]`, `out[1:]` and `to_tuple()` over the values that
are not None; `len(out)`, `"logits" in out`, iteration, `keys()`, `values()` and `items()` over those fields.
`return_dict=False` returns `to_tuple()`. The classes also follow TensorFlow's nest protocol
(all fields are the components, the class is the metadata), so TF outputs pass through `tf.function`.
Field values are framework tensors: (B, T, H) hidden states, (B, nh, T, S) attentions, (B, T, V) logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

Tensor = Any  # torch.Tensor or tf.Tensor
Tensors = tuple[Any, ...]


@dataclass
class ModelOutput:
    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.keys())

    def values(self) -> tuple[Any, ...]:
        return self.to_tuple()

    def items(self) -> tuple[tuple[str, Any], ...]:
        return tuple((name, getattr(self, name)) for name in self.keys())

    def __getitem__(self, key: int | slice | str) -> Any:
        if not isinstance(key, str):
            return self.to_tuple()[key]
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.to_tuple())

    def __tf_flatten__(self):
        return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        return metadata(*components)


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: Tensor | None = None  # (B, T, H)
    pooler_output: Tensor | None = None  # (B, H)
    hidden_states: Tensors | None = None  # num_layers + 1 of (B, T, H)
    past_key_values: Tensors | None = None  # per layer (key, value[, cross key, cross value]), (B, nh, S, hs)
    attentions: Tensors | None = None  # num_layers of (B, nh, T, S)
    cross_attentions: Tensors | None = None


    def legacy_tuple(self) -> tuple[Any, ...]:
        """What transformers' RemBertModel returns with return_dict=False: the pooled output's place kept (None
        without a pooler), then the encoder's outputs in the encoder's order (the cache before hidden states)."""
        rest = (self.past_key_values, self.hidden_states, self.attentions, self.cross_attentions)
        return (self.last_hidden_state, self.pooler_output, *(v for v in rest if v is not None))


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: Tensor | None = None  # scalar
    logits: Tensor | None = None  # (B, T, V)
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class CausalLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None  # (B, T, V)
    past_key_values: Tensors | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    cross_attentions: Tensors | None = None


@dataclass
class ClassifierOutput(ModelOutput):
    """Sequence (B, num_labels), multiple choice (B, num_choices) and token (B, T, num_labels) logits."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class QuestionAnsweringOutput(ModelOutput):
    loss: Tensor | None = None
    start_logits: Tensor | None = None  # (B, T)
    end_logits: Tensor | None = None  # (B, T)
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
