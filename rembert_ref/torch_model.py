"""RemBERT in PyTorch, one file, top to bottom.

Follows Hugging Face transformers' `models/rembert/modeling_rembert.py` (itself a port of Google's TF1 BERT
code with RemBERT's changes: small input embeddings mapped up to the hidden size by
`embedding_hidden_mapping_in`, and a decoupled, wider output embedding in the MLM head). The module and
parameter names are the same as transformers', so a state dict moves between the two unchanged:

    rembert.embeddings.{word,position,token_type}_embeddings.weight, rembert.embeddings.LayerNorm.*
    rembert.encoder.embedding_hidden_mapping_in.*
    rembert.encoder.layer.{i}.attention.self.{query,key,value}.*, ...attention.output.{dense,LayerNorm}.*
    rembert.encoder.layer.{i}.crossattention.*          (decoders with add_cross_attention only)
    rembert.encoder.layer.{i}.intermediate.dense.*, ...output.{dense,LayerNorm}.*
    rembert.pooler.dense.*
    cls.predictions.{dense,LayerNorm,decoder}.*         (hidden -> output_embedding_size -> vocab)
    classifier.* / qa_outputs.*                         (task heads)

The bare `RemBertModel` has the same names without the `rembert.` prefix. `from_pretrained` reads either.
No `transformers` import: this file is the reference the converted files are checked against.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rembert_ref.errors import UserError
from rembert_ref.config import RemBertConfig
from rembert_ref.outputs import (
    BaseModelOutput,
    CausalLMOutput,
    ClassifierOutput,
    MaskedLMOutput,
    ModelOutput,
    QuestionAnsweringOutput,
)
from rembert_ref.weight_files import read_weight_index

# One (k, v) pair per layer, each (B, nh, T_past, hs); decoders with cross-attention append the encoder's
# (k, v), which are computed once and reused on every later step.
PastKeyValues = tuple[tuple[torch.Tensor, ...], ...]


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The config's `hidden_act`, with Hugging Face's meanings."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        # TF1 BERT's gelu: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return lambda x: F.gelu(x)  # exact, with erf
    if name == "relu":
        return F.relu
    if name == "tanh":
        return torch.tanh
    raise UserError(f"unknown hidden_act {name!r}; use one of: gelu_new, gelu, gelu_pytorch_tanh, relu, tanh")


# ----------------------------------------------------------------------------------------------------------
# The model, bottom-up: embeddings, attention, feed-forward, layer, encoder, pooler, MLM head.


class RemBertEmbeddings(nn.Module):
    """word + position + token type embeddings in the small input size, then LayerNorm."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        E = config.input_embedding_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E)
        self.LayerNorm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor,  # (B, T)
        position_ids: torch.Tensor,  # (B, T) or (1, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, E): replaces the word embedding lookup
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (B, T, E)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))  # (B, T, E)


class RemBertSelfAttention(nn.Module):
    """Multi-head attention. Self-attention by default; cross-attention when given `kv_states`."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.n_head = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C)
        self.value = nn.Linear(C, C)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        mask: torch.Tensor | None,  # additive, broadcastable to (B, nh, T, S)
        head_mask: torch.Tensor | None = None,  # broadcastable to (B, nh, T, S); 1 keeps a head, 0 drops it
        kv_states: torch.Tensor | None = None,  # (B, S, C) encoder states for cross-attention
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,  # each (B, nh, S_past, hs)
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q = self.split_heads(self.query(x))  # (B, nh, T, hs)
        if kv_states is not None and past_kv is not None:
            k, v = past_kv  # the encoder's keys and values do not change from one decoding step to the next
        else:
            source = x if kv_states is None else kv_states
            k = self.split_heads(self.key(source))  # (B, nh, S, hs)
            v = self.split_heads(self.value(source))
            if past_kv is not None:  # self-attention with a cache: the new positions follow the cached ones
                k = torch.cat([past_kv[0], k], dim=2)
                v = torch.cat([past_kv[1], v], dim=2)
        # The same operation order as transformers (matmul, then scale, then add the mask) keeps the
        # comparison with it at float32 rounding level.
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)  # (B, nh, T, S)
        if mask is not None:
            att = att + mask
        att = self.dropout(F.softmax(att, dim=-1))
        if head_mask is not None:
            att = att * head_mask
        y = torch.matmul(att, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return y, att, (k, v)


class RemBertOutput(nn.Module):
    """Projection back to the hidden size, dropout, residual, LayerNorm (post-LN, like BERT): after attention
    (`attention.output`, from the hidden size; transformers' RemBertSelfOutput) and after the feed-forward
    (`output`, from the intermediate size)."""

    def __init__(self, config: RemBertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(y)) + residual)  # (B, T, C)


class RemBertAttention(nn.Module):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.self = RemBertSelfAttention(config)
        self.output = RemBertOutput(config, config.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        head_mask: torch.Tensor | None = None,
        kv_states: torch.Tensor | None = None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y, att, kv = self.self(x, mask, head_mask, kv_states, past_kv)
        return self.output(y, x), att, kv


class RemBertIntermediate(nn.Module):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))  # (B, T, I)


class RemBertLayer(nn.Module):
    """Self-attention, then (decoders with add_cross_attention) cross-attention, then the feed-forward."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.attention = RemBertAttention(config)
        if config.add_cross_attention:
            self.crossattention = RemBertAttention(config)
        self.intermediate = RemBertIntermediate(config)
        self.output = RemBertOutput(config, config.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        mask: torch.Tensor | None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,  # (B, S, C)
        encoder_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, ...] | None = None,  # (k, v) or (k, v, cross_k, cross_v)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        x, att, present = self.attention(x, mask, head_mask, past_kv=past[:2] if past is not None else None)
        cross_att = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise UserError(
                    "encoder_hidden_states were given but the model has no cross-attention; "
                    "build it with is_decoder=True and add_cross_attention=True"
                )
            cross_past = past[2:4] if past is not None and len(past) == 4 else None
            x, cross_att, cross_present = self.crossattention(
                x, encoder_mask, head_mask, kv_states=encoder_hidden_states, past_kv=cross_past
            )
            present = present + cross_present
        x = self.output(self.intermediate(x), x)  # (B, T, C)
        return x, att, cross_att, present


class RemBertEncoder(nn.Module):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.embedding_hidden_mapping_in = nn.Linear(config.input_embedding_size, config.hidden_size)
        self.layer = nn.ModuleList([RemBertLayer(config) for _ in range(config.num_hidden_layers)])


class RemBertPooler(nn.Module):
    """tanh(dense(hidden state of the first token))."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, C)


class RemBertLMPredictionHead(nn.Module):
    """RemBERT's decoupled output embedding: hidden -> output_embedding_size -> vocab, not tied to the input."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.output_embedding_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.output_embedding_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.output_embedding_size, config.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.LayerNorm(self.act(self.dense(x)))  # (B, T, O)
        return self.decoder(x)  # (B, T, V)


class RemBertOnlyMLMHead(nn.Module):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.predictions = RemBertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


# -- outputs: rembert_ref/outputs.py, shared with the other framework's models


# ----------------------------------------------------------------------------------------------------------
# The common base: weight initialisation, loading and saving (bodies at the end of the file).


class RemBertPreTrainedModel(nn.Module):
    base_model_prefix = "rembert"

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.config = config
        self.loading_info: dict[str, list[str]] = {"missing": [], "unexpected": [], "newly_initialized": []}

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' scheme: normal(0, initializer_range) matrices, zero biases, LayerNorm = identity.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def post_init(self) -> None:
        # A head's `rembert` initialised itself when it was built; doing it again costs time, not results.
        for name, child in self.named_children():
            if name != self.base_model_prefix:
                child.apply(self._init_weights)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, config: RemBertConfig | None = None, strict_backbone: bool = True
    ) -> RemBertPreTrainedModel:
        """Load `config.json` and the weights (`model.safetensors`, a sharded `model.safetensors.index.json`,
        or `pytorch_model.bin`) from `directory`, in the prefixed (`rembert.`) or the bare layout.

        A missing backbone or MLM-head weight is a UserError (with `strict_backbone=False` it is initialised
        and listed under "missing"). Weights this class has no place for (the pooler for the MLM, `cls.*` for
        the base model) are listed under "unexpected". Task heads and cross-attention are initialised with
        normal(0, initializer_range) weights and zero biases (seed with torch.manual_seed first) and listed
        under "newly_initialized". The lists are in `model.loading_info`. Returns the model in eval mode.
        """
        return _from_pretrained(cls, directory, config, strict_backbone)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` (this class's layout, metadata {"format": "pt"})."""
        _save_pretrained(self, directory)

    # -- masks ----------------------------------------------------------------------------------------

    def extended_attention_mask(self, attention_mask: torch.Tensor, T: int) -> torch.Tensor:
        """1/0 mask (B, S) or (B, T, S) -> additive (B, 1, T or 1, S): 0 to attend, finfo.min to ignore.
        Decoders given a (B, S) mask also get the causal mask, with the S - T cached positions visible."""
        dtype = self.dtype
        if attention_mask.dim() == 3:
            mask = attention_mask[:, None, :, :]  # (B, 1, T, S)
        elif attention_mask.dim() == 2:
            if self.config.is_decoder:
                S = attention_mask.shape[1]
                i = torch.arange(T, device=attention_mask.device)[:, None] + (S - T)  # absolute query positions
                j = torch.arange(S, device=attention_mask.device)[None, :]
                causal = (j <= i).to(attention_mask.dtype)  # (T, S)
                mask = causal[None, None, :, :] * attention_mask[:, None, None, :]  # (B, 1, T, S)
            else:
                mask = attention_mask[:, None, None, :]  # (B, 1, 1, S)
        else:
            raise UserError(f"attention_mask must have 2 or 3 dimensions, got shape {tuple(attention_mask.shape)}")
        return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min

    def invert_encoder_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        mask = encoder_attention_mask
        mask = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]  # (B, 1, 1 or T, S)
        dtype = self.dtype
        return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min

    def expand_head_mask(self, head_mask: torch.Tensor | None) -> list[torch.Tensor | None]:
        """(nh,) or (L, nh), 1 keeps a head, 0 drops it -> per layer, broadcastable to (B, nh, T, S)."""
        L = self.config.num_hidden_layers
        if head_mask is None:
            return [None] * L
        if head_mask.dim() == 1:
            head_mask = head_mask[None].expand(L, -1)
        if head_mask.dim() != 2:
            raise UserError(f"head_mask must be (num_heads,) or (num_layers, num_heads), got {tuple(head_mask.shape)}")
        head_mask = head_mask.to(self.dtype)
        return [head_mask[i][None, :, None, None] for i in range(L)]  # (1, nh, 1, 1)


# ----------------------------------------------------------------------------------------------------------
# The base model and the task heads.


class RemBertModel(RemBertPreTrainedModel):
    def __init__(self, config: RemBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        if config.add_cross_attention and not config.is_decoder:
            raise UserError("add_cross_attention needs is_decoder=True in the config; set both or neither")
        self.embeddings = RemBertEmbeddings(config)
        self.encoder = RemBertEncoder(config)
        self.pooler = RemBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T_past + T) or (B, T, T_past + T); 1 = attend
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        position_ids: torch.Tensor | None = None,  # (B, T); default T_past .. T_past + T - 1
        head_mask: torch.Tensor | None = None,  # (nh,) or (L, nh)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, E)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, S, C)
        encoder_attention_mask: torch.Tensor | None = None,  # (B, S)
        past_key_values: PastKeyValues | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput | tuple:
        config = self.config
        use_cache = (config.use_cache if use_cache is None else use_cache) if config.is_decoder else False
        if (input_ids is None) == (inputs_embeds is None):
            raise UserError("pass exactly one of input_ids and inputs_embeds")
        B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        T_past = past_key_values[0][0].shape[2] if past_key_values is not None else 0

        if attention_mask is None:
            attention_mask = torch.ones(B, T_past + T, device=device)
        if token_type_ids is None:
            token_type_ids = torch.zeros(B, T, dtype=torch.long, device=device)
        if position_ids is None:
            position_ids = torch.arange(T_past, T_past + T, device=device)[None]  # (1, T)
        mask = self.extended_attention_mask(attention_mask, T)  # (B, 1, 1 or T, T_past + T)
        encoder_mask = None
        if config.is_decoder and encoder_hidden_states is not None:
            if encoder_attention_mask is None:
                encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], device=device)
            encoder_mask = self.invert_encoder_mask(encoder_attention_mask)  # (B, 1, 1, S)
        head_masks = self.expand_head_mask(head_mask)

        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, T, E)
        x = self.encoder.embedding_hidden_mapping_in(x)  # (B, T, C)
        hidden_states, attentions, cross_attentions, presents = [], [], [], []
        for i, block in enumerate(self.encoder.layer):
            hidden_states.append(x)
            past = past_key_values[i] if past_key_values is not None else None
            x, att, cross_att, present = block(x, mask, head_masks[i], encoder_hidden_states, encoder_mask, past)
            attentions.append(att)
            cross_attentions.append(cross_att)
            presents.append(present)
        hidden_states.append(x)

        out = BaseModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            past_key_values=tuple(presents) if use_cache else None,
            attentions=tuple(attentions) if output_attentions else None,
            cross_attentions=(tuple(cross_attentions) if output_attentions and config.add_cross_attention else None),
        )
        return out if return_dict is not False else out.legacy_tuple()


def _finish(out: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
    return out if return_dict is not False else out.to_tuple()


class RemBertForMaskedLM(RemBertPreTrainedModel):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        if config.is_decoder:
            warnings.warn(
                "RemBertForMaskedLM with is_decoder=True attends only to the left; set is_decoder=False",
                stacklevel=2,
            )
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.cls = RemBertOnlyMLMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,  # (B, T), -100 = not scored
        return_dict: bool | None = None,
        **inputs: Any,  # RemBertModel.forward's other arguments, passed through
    ) -> MaskedLMOutput | tuple:
        out = self.rembert(input_ids, attention_mask, use_cache=False, **inputs)
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.config.vocab_size), labels.reshape(-1))
        return _finish(MaskedLMOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


class RemBertForCausalLM(RemBertPreTrainedModel):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        if not config.is_decoder:
            # transformers only warns, and then runs without the causal mask; that is never what one wants.
            raise UserError(
                "RemBertForCausalLM needs is_decoder=True in the config; "
                "pass dataclasses.replace(config, is_decoder=True)"
            )
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.cls = RemBertOnlyMLMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,  # (B, T), the inputs themselves; shifted here, -100 = not scored
        return_dict: bool | None = None,
        **inputs: Any,  # RemBertModel.forward's other arguments (past_key_values, use_cache...), passed through
    ) -> CausalLMOutput | tuple:
        out = self.rembert(input_ids, attention_mask, **inputs)
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:  # position t predicts token t + 1
            shifted = logits[:, :-1].reshape(-1, self.config.vocab_size).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1))
        return _finish(
            CausalLMOutput(loss, logits, out.past_key_values, out.hidden_states, out.attentions, out.cross_attentions),
            return_dict,
        )


class RemBertForSequenceClassification(RemBertPreTrainedModel):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,  # (B,) class ids, (B,) or (B, 1) targets, or (B, num_labels) 0/1
        return_dict: bool | None = None,
        **inputs: Any,  # RemBertModel.forward's other arguments, passed through
    ) -> ClassifierOutput | tuple:
        out = self.rembert(input_ids, attention_mask, **inputs)
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.config)
        return _finish(ClassifierOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: RemBertConfig) -> torch.Tensor:
    """The loss by config.problem_type; when unset, inferred like transformers: one label -> regression,
    integer labels -> single-label cross-entropy, anything else -> multi-label BCE with logits."""
    n = config.num_labels
    problem = config.problem_type
    if problem is None:
        if n == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if n == 1 else F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise UserError(
        f"unknown problem_type {problem!r}; use regression, single_label_classification or multi_label_classification"
    )


class RemBertForMultipleChoice(RemBertPreTrainedModel):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, n_choices, T)
        attention_mask: torch.Tensor | None = None,  # (B, n_choices, T)
        *,
        labels: torch.Tensor | None = None,  # (B,) index of the right choice
        return_dict: bool | None = None,
        **inputs: Any,  # RemBertModel.forward's other arguments, (B, n_choices, ...) where per token
    ) -> ClassifierOutput | tuple:
        leading = input_ids if input_ids is not None else inputs.get("inputs_embeds")

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:  # (B, n_choices, T, ...) -> (B * n_choices, T, ...)
            return t.flatten(0, 1) if t is not None else None

        per_token = ("token_type_ids", "position_ids", "inputs_embeds")
        inputs = {k: flat(v) if k in per_token else v for k, v in inputs.items()}
        out = self.rembert(flat(input_ids), flat(attention_mask), **inputs)  # refuses no input, or both
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, leading.shape[1])  # (B, n_choices)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return _finish(ClassifierOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


class RemBertForTokenClassification(RemBertPreTrainedModel):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,  # (B, T), -100 = not scored
        return_dict: bool | None = None,
        **inputs: Any,  # RemBertModel.forward's other arguments, passed through
    ) -> ClassifierOutput | tuple:
        out = self.rembert(input_ids, attention_mask, **inputs)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.config.num_labels), labels.reshape(-1))
        return _finish(ClassifierOutput(loss, logits, out.hidden_states, out.attentions), return_dict)


class RemBertForQuestionAnswering(RemBertPreTrainedModel):
    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)  # start and end scores
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        start_positions: torch.Tensor | None = None,  # (B,) or (B, 1)
        end_positions: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **inputs: Any,  # RemBertModel.forward's other arguments, passed through
    ) -> QuestionAnsweringOutput | tuple:
        out = self.rembert(input_ids, attention_mask, **inputs)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0].contiguous(), logits[..., 1].contiguous()  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # Like transformers: answers outside the window are clamped to index T and that index is ignored.
            T = start_logits.shape[1]
            start = start_positions.view(-1).clamp(0, T)
            end = end_positions.view(-1).clamp(0, T)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=T) + F.cross_entropy(end_logits, end, ignore_index=T)
            ) / 2
        return _finish(
            QuestionAnsweringOutput(loss, start_logits, end_logits, out.hidden_states, out.attentions), return_dict
        )


MODEL_CLASSES: dict[str, type[RemBertPreTrainedModel]] = {
    c.__name__: c
    for c in (
        RemBertModel,
        RemBertForMaskedLM,
        RemBertForCausalLM,
        RemBertForSequenceClassification,
        RemBertForMultipleChoice,
        RemBertForTokenClassification,
        RemBertForQuestionAnswering,
    )
}


# ----------------------------------------------------------------------------------------------------------
# Loading and saving.

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
BACKBONE_MODULES = ("embeddings.", "encoder.", "pooler.")
# Older transformers versions saved this non-persistent buffer; it holds arange(max_positions), no weights.
IGNORED_KEYS = ("rembert.embeddings.position_ids",)


def canonical_name(name: str) -> str:
    """Both layouts -> the prefixed one: bare backbone names gain `rembert.`, head names stay as they are."""
    return "rembert." + name if name.startswith(BACKBONE_MODULES) else name


def _is_pretrained(name: str) -> bool:
    """Canonical names that a pretrained checkpoint must supply: backbone and MLM head. Task heads and
    cross-attention (new in a decoder built from an encoder) are trained later, so they may start fresh."""
    if ".crossattention." in name:
        return False
    return name.startswith(("rembert.", "cls."))


def find_weights(directory: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """The weights file chosen in `directory` and {tensor name: path of the file that holds it}, read from
    headers and indexes only. Safetensors wins when both kinds exist; the choice is fixed, not by date."""
    directory = os.fspath(directory)
    for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, TORCH_FILE, TORCH_INDEX_FILE):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".index.json"):
            return name, _read_index(directory, path)
        with _WeightsFile(path) as tensors:
            return name, dict.fromkeys(tensors.keys(), path)
    raise UserError(
        f"{directory} has none of {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE}, {TORCH_FILE}, {TORCH_INDEX_FILE}; "
        "point at a converted model directory"
    )


def read_state_dict(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """All the weights in `directory` at once, and the file they came from."""
    weights_file, locations = find_weights(directory)
    return dict(_iter_tensors(locations)), weights_file


class _WeightsFile:
    """One weights file as a context manager giving keys() and get_tensor(): safetensors reads a tensor when
    asked and a torch pickle is memory-mapped, so the file is never held in memory next to the model."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.context = None

    def __enter__(self):
        try:
            if self.path.endswith(".safetensors"):
                from safetensors import safe_open

                self.context = safe_open(self.path, framework="pt")
                return self.context.__enter__()
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files from before torch 1.6's zip format cannot be memory-mapped
                state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # SafetensorError, RuntimeError, UnpicklingError, ... all mean a bad file
            raise UserError(f"cannot read weights file {self.path} ({exc}); convert the checkpoint again") from exc
        if not isinstance(state, dict):
            raise UserError(f"{self.path} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
        return _DictHandle(state)

    def __exit__(self, *exc_info: object) -> None:
        if self.context is not None:
            self.context.__exit__(*exc_info)


class _DictHandle:
    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def keys(self) -> list[str]:
        return list(self.state)

    def get_tensor(self, key: str) -> torch.Tensor:
        return self.state[key]


def _read_index(directory: str, index_path: str) -> dict[str, str]:
    weight_map, _ = read_weight_index(index_path)
    locations = {key: os.path.join(directory, shard) for key, shard in weight_map.items()}
    for shard in sorted(set(weight_map.values())):
        if not os.path.isfile(os.path.join(directory, shard)):
            raise UserError(f"{index_path} names shard {shard}, which is not in {directory}; copy it there")
    return locations


def _iter_tensors(locations: dict[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every name, one file open at a time, names sorted within a file."""
    for path in sorted(set(locations.values())):
        wanted = sorted(k for k, p in locations.items() if p == path)
        with _WeightsFile(path) as tensors:
            absent = sorted(set(wanted) - set(tensors.keys()))
            if absent:
                raise UserError(
                    f"{os.path.basename(path)} lacks {', '.join(absent)}, which its index promises; write it again"
                )
            for key in wanted:
                yield key, tensors.get_tensor(key)


def _from_pretrained(
    cls: type[RemBertPreTrainedModel],
    directory: str | os.PathLike,
    config: RemBertConfig | None,
    strict_backbone: bool,
) -> RemBertPreTrainedModel:
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise UserError(f"model directory {directory} does not exist; convert a checkpoint into it first")
    if config is None:
        config_path = os.path.join(directory, "config.json")
        if not os.path.isfile(config_path):
            raise UserError(f"{config_path} does not exist; pass config= or convert the checkpoint into {directory}")
        config = RemBertConfig.from_json_file(config_path)
    weights_file, locations = find_weights(directory)

    # Build without allocating or initialising: every tensor is then either loaded or initialised below.
    with torch.device("meta"):
        model = cls(config)
    model.to_empty(device="cpu")
    params = dict(model.named_parameters())
    by_canonical = {canonical_name(k): k for k in params}

    targets: dict[str, str] = {}  # file key -> model parameter name
    unexpected = []
    for key in sorted(locations):
        canonical = canonical_name(key)
        if canonical in IGNORED_KEYS:
            continue
        if canonical in by_canonical:
            targets[key] = by_canonical[canonical]
        else:
            unexpected.append(key)
    absent = sorted(set(params) - set(targets.values()))
    missing = [k for k in absent if _is_pretrained(canonical_name(k))]
    if missing and strict_backbone:
        raise UserError(
            f"{weights_file} in {directory} lacks {len(missing)} weight(s) {cls.__name__} needs: "
            f"{', '.join(missing)}; convert the full checkpoint, or pass strict_backbone=False to initialise them"
        )

    mismatched = []
    with torch.no_grad():
        for key, tensor in _iter_tensors({k: locations[k] for k in targets}):
            param = params[targets[key]]
            if tensor.shape != param.shape:
                mismatched.append(f"{key}: file {tuple(tensor.shape)}, model {tuple(param.shape)}")
            else:
                param.copy_(tensor)  # casts to the model's float32
        for name in absent:  # sorted, so a seeded caller gets the same heads every time
            _init_parameter(params[name], name, config)
    if mismatched:
        raise UserError(
            f"weights in {weights_file} do not fit the config: {'; '.join(mismatched)}; "
            "use the config.json the weights were written with"
        )
    model.loading_info = {
        "missing": missing,
        "unexpected": unexpected,
        "newly_initialized": sorted(set(absent) - set(missing)),
        "weights_file": [weights_file],
    }
    return model.eval()


def _init_parameter(p: torch.Tensor, name: str, config: RemBertConfig) -> None:
    """The initialisation `_init_weights` would give this one tensor (names in sorted order keep it seeded)."""
    if name.endswith("bias"):
        p.zero_()
    elif name.endswith("LayerNorm.weight"):
        p.fill_(1.0)
    else:
        p.normal_(mean=0.0, std=config.initializer_range)
        if name.endswith("word_embeddings.weight") and config.pad_token_id is not None:
            p[config.pad_token_id].zero_()


def _save_pretrained(model: RemBertPreTrainedModel, directory: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # the dtype the weights are saved in
    config = dataclasses.replace(model.config, architectures=[type(model).__name__], torch_dtype=dtype)
    config.save(os.path.join(directory, "config.json"))
    state = {k: v.detach().contiguous() for k, v in sorted(model.state_dict().items())}
    save_file(state, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})
