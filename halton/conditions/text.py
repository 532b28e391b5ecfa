"""Text as a condition: token embeddings of a frozen text encoder and their padding mask; the null condition is
the reference's, zero embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from halton.conditions.base import Condition, ConditionKind
from halton.utils.files import read_lines


def read_prompt_file(path: str | Path, key: str = "prompt_file") -> list[str]:
    """The prompts of a UTF-8 text file, one per line (blank lines and lines starting with # skipped); a file that
    is not UTF-8 is refused in one line naming the option ``key`` that gave it."""
    return read_lines(path, key)


@dataclass
class TextEmbeddings(Condition):
    embeddings: torch.Tensor          # [B, L, D] float
    mask: torch.Tensor | None = None  # [B, L] bool, True = real token; None: every token counts (the reference)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def index(self, rows) -> "TextEmbeddings":
        return TextEmbeddings(self.embeddings[rows], None if self.mask is None else self.mask[rows])

    def concat(self, other: "TextEmbeddings") -> "TextEmbeddings":
        mask = None if self.mask is None or other.mask is None else torch.cat([self.mask, other.mask])
        return TextEmbeddings(torch.cat([self.embeddings, other.embeddings]), mask)

    def to(self, device) -> "TextEmbeddings":
        return TextEmbeddings(self.embeddings.to(device), None if self.mask is None else self.mask.to(device))

    def check(self, model) -> None:
        TextKind.check_text_model(model)
        width = self.embeddings.shape[-1]
        if width != model.text_dim:
            raise ValueError(f"the text embeddings are {width} wide but the model's text width is {model.text_dim}; "
                             f"use a text encoder of width {model.text_dim}")
        if self.mask is not None and len(self) and not bool(self.mask.any(dim=1).all()):
            raise ValueError("a text has no real token (its padding mask is all False)")

    def prepare(self, model, drop: torch.Tensor):
        return model.condition(self.embeddings, drop, self.mask)


class TextKind(ConditionKind):
    """Text-conditional models: prompts encoded by a frozen Hugging Face encoder (:class:`halton.text.TextEncoder`,
    loaded on first use), or the embeddings stored in the shards (``text_emb``, ``text_mask``) when the data has
    them, else the batch's ``captions`` encoded in the training step.

    ``use_mask``: honour the padding mask in cross-attention (False: attend to every token, as the reference).
    ``prompts``: the rows of the sample grids drawn during training.
    """

    name = "text"
    requested_with = "prompt=..., prompts=[...] or prompt_file=PATH"

    def __init__(self, encoder: str = "google/flan-t5-xl", max_length: int = 120, dtype: str = "auto",
                 use_mask: bool = True, prompts: Sequence[str] = ()):
        self.encoder_name, self.max_length, self.dtype, self.use_mask = encoder, max_length, dtype, use_mask
        self.grid_prompts = [str(p) for p in prompts]
        self._encoder = None

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "encoder": self.encoder_name, "max_length": self.max_length, "dtype": self.dtype,
                "use_mask": self.use_mask, "prompts": list(self.grid_prompts)}

    @property
    def encoder(self):
        if self._encoder is None:
            from halton.text import TextEncoder

            self._encoder = TextEncoder(self.encoder_name, max_length=self.max_length, dtype=self.dtype)
        return self._encoder

    @staticmethod
    def check_text_model(model) -> None:
        if not hasattr(model, "text_dim"):
            raise ValueError(f"{type(model).__name__} is class-conditional; a text condition needs a text-to-image "
                             "model (give classes=[...] instead of prompts)")

    def check_model(self, model) -> None:
        self.check_text_model(model)
        self.encoder.check_width(model.text_dim)

    def check_data(self, datamodule) -> None:
        """Embeddings stored in the shards must come from this kind's encoder at this length: the prompts of the
        sample grids and of sample.py are encoded with it."""
        stored = datamodule.precomputed_text() if hasattr(datamodule, "precomputed_text") else {}
        if stored and (stored.get("encoder"), stored.get("max_length")) != (self.encoder_name, self.max_length):
            raise ValueError(f"the shards hold embeddings of encoder {stored.get('encoder')} at max_length "
                             f"{stored.get('max_length')}, but model.condition encodes prompts with "
                             f"{self.encoder_name} at {self.max_length}; allowed: the same encoder and length")

    def encode(self, prompts: Sequence[str], device) -> TextEmbeddings:
        encoder = self.encoder.to(device)
        embeddings, mask = encoder.encode(list(prompts))
        return TextEmbeddings(embeddings.to(device), mask.to(device) if self.use_mask else None)

    def from_batch(self, batch) -> TextEmbeddings:
        if "text_emb" in batch:
            mask = batch.get("text_mask") if self.use_mask else None
            return TextEmbeddings(batch["text_emb"].float(), mask)  # stored as bf16; autocast casts it back
        if "captions" not in batch:
            raise ValueError("a text model trains on shards with captions (extract them with captions; see README)")
        return self.encode(batch["captions"], batch["codes"].device)

    def make(self, values: Sequence[str], device) -> TextEmbeddings:
        return self.encode(values, device)

    def requested(self, model, classes, prompts) -> list[str]:
        if classes is not None:
            raise ValueError(f"classes are for class-conditional models; {type(model).__name__} is text-to-image: "
                             f"give {self.requested_with}")
        values = list(prompts) or self.grid_values(model)
        if not values:
            raise ValueError(f"no prompt to draw; give {self.requested_with}")
        return values

    def grid_values(self, model) -> list[str]:
        return list(self.grid_prompts)

    def prompts(self, values: Sequence[str]) -> list[str]:
        return [str(v) for v in values]
