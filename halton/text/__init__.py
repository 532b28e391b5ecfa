"""Text conditions: a frozen Hugging Face text encoder (prompts -> token embeddings and padding masks)."""

from halton.text.encoder import MINILM, TextEncoder

__all__ = ["MINILM", "TextEncoder"]
