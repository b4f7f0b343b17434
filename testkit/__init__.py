"""Testing tools, not product code: synthetic original-format TF1 checkpoints and SentencePiece models
written by TensorFlow and SentencePiece themselves. Tests, the shipped example and the benchmarks use them."""
