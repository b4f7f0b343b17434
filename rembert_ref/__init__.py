"""Reference RemBERT models (numpy ground truth, PyTorch, TF2) and tokenizers, with Hugging Face weight names."""

from rembert_ref.config import RemBertConfig

__all__ = ["RemBertConfig"]
