"""Converters from Google's original RemBERT TF1 checkpoints to PyTorch, safetensors, TF2 and tokenizer files."""
