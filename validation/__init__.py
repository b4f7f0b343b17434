"""Parity checks between the original checkpoint and every converted format."""
