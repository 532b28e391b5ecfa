# ruff: noqa: UP045  (OmegaConf reads these annotations to type the config keys)
"""The text options of a data config that makes its own captioned shards (the digits): captions, whether their
embeddings are stored (``precompute``) or computed by the training step (``online``), and the caption length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from halton.options.choices import TEXT_EMBEDDINGS
from halton.options.rules import Invalid, boolean, choice, integer, key


@dataclass(frozen=True)
class TextDataOptions:
    captions: bool = False
    text_embeddings: str = "online"
    text_max_length: int = 16
    text_length: Optional[int] = None  # what the model config reads: the same number

    def __post_init__(self) -> None:
        boolean("captions", self.captions)
        if choice("text_embeddings", self.text_embeddings, TEXT_EMBEDDINGS) == "precompute" and not self.captions:
            raise Invalid(f"{key('text_embeddings')}=precompute encodes the captions; allowed with "
                          f"{key('captions')}=true only")
        integer("text_max_length", self.text_max_length, 1)
        if integer("text_length", self.text_length, 1, optional=True) not in (None, self.text_max_length):
            raise Invalid(f"{key('text_length')}={self.text_length} but {key('text_max_length')}="
                          f"{self.text_max_length}; allowed: the same number (the model reads text_length, the "
                          "encoder pads to text_max_length)")
