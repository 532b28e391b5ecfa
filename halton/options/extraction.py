# ruff: noqa: UP045  (OmegaConf reads these annotations to type the config keys)
"""The options of extraction (``python -m halton.data.extract``, conf/extract.yaml) and the rules of their values:
what it needs of its data config (a tokenizer to encode with, and the weights of a tokenizer that loads them), the
encoding options, and captions for ``text.embeddings=precompute``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from halton.options.choices import PRECISIONS, TEXT_EMBEDDINGS
from halton.options.rules import Invalid, boolean, choice, integer, key


@dataclass(frozen=True)
class ExtractionOptions:
    """How the images are encoded: resized to ``image_size`` (None: as the source gives them), also mirrored
    (``flip``), ``batch_size`` images per encoder batch, ``num_workers`` decoding processes, ``precision``; written
    ``chunk_size`` samples per chunk."""

    split: str = "train"
    image_size: Optional[int] = None
    flip: bool = False
    chunk_size: int = 1000
    batch_size: int = 64
    num_workers: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not str(self.split) or "/" in str(self.split) or str(self.split).startswith("."):
            raise Invalid(f"{key('split')}={self.split!r} is not a folder name; allowed: train, val, or another plain "
                          "name")
        integer("image_size", self.image_size, 1, optional=True)
        boolean("flip", self.flip)
        integer("chunk_size", self.chunk_size, 1)
        integer("batch_size", self.batch_size, 1)
        integer("num_workers", self.num_workers, 0)
        choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class TextEncodingOptions:
    """``text.*``: the captions' token embeddings are stored (``precompute``, by ``encoder``, ``max_length``
    tokens per caption) or computed by the training step (``online``)."""

    embeddings: str = "online"
    encoder: Optional[str] = None
    max_length: int = 120

    def __post_init__(self) -> None:
        if choice("embeddings", self.embeddings, TEXT_EMBEDDINGS) == "precompute":
            integer("max_length", self.max_length, 1)
            if not str(self.encoder or "").strip():
                raise Invalid(f"{key('encoder')} is not set; allowed: minilm, a local model folder or a hub name "
                              "(org/name)")


def captioned(source_format: str, captions: Any = False) -> bool | None:
    """Whether a source of ``source.format`` has captions, as far as its config tells (None: only its files do)."""
    if source_format == "imagefolder":
        return False
    return bool(captions) if source_format == "digits" else None


def check_captions(embeddings: Any, has_captions: bool | None, source: str) -> str:
    """``text.embeddings``: ``precompute`` encodes captions, so the source (named ``source`` in the message) must
    have some (``has_captions`` None: not known yet)."""
    if choice("text.embeddings", embeddings, TEXT_EMBEDDINGS) == "precompute" and has_captions is False:
        raise Invalid(f"text.embeddings=precompute encodes captions, but {source} has none; allowed: a source with "
                      "captions (webdataset .txt or a json caption; source.captions=true for the digits), or "
                      "text.embeddings=online")
    return embeddings


def check_extraction_tokenizer(data: Any, vq_checkpoint: str | None) -> None:
    """``data``: the data config (a dict or a DictConfig)."""
    tokenizer = data.get("tokenizer")
    if tokenizer is None:
        raise Invalid(f"data={data.get('_target_')} has no tokenizer to extract with; allowed: a data config with "
                      "data.tokenizer (e.g. data=imagenet_codes)")
    if tokenizer.get("_partial_") and not (vq_checkpoint or data.get("vq_checkpoint")):
        release = data.get("vq_release")
        raise Invalid("vq_checkpoint is not set: extraction needs the tokenizer weights"
                      f"{f' ({release})' if release else ''}; pass vq_checkpoint=PATH")
