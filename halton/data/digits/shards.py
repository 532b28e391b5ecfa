"""The digits through the whole shard pipeline: extracted into code shards on first use (``prepare_data``), then
loaded like any other shards. What ``python train.py experiment=digits`` and the demo run."""

from __future__ import annotations

import logging
import re

import torch

from halton.data.digits.in_memory import CLASSES, LEVELS, SIDE, DigitsDataModule
from halton.data.format.manifest import MANIFEST_NAME, Manifest, ManifestMismatch
from halton.data.reading.shard_datamodule import CodeShardsDataModule
from halton.data.writing.extraction import extract_locally
from halton.data.writing.sources import DigitsSource
from halton.options.text import TextDataOptions
from halton.tokenizers import PixelTokenizer

SPLITS = ("train", "val")
OWN_FILE = re.compile(r"\d{6}\.(tar|json)|manifest\.json")  # only what extraction writes is ever deleted
log = logging.getLogger(__name__)


class DigitsShardsDataModule(CodeShardsDataModule):
    """Shards of the seeded digits split (:func:`halton.data.digits.in_memory.load_digits_split`) under ``root``, made by
    :meth:`prepare_data` when they are missing, damaged or were made from another split (with a warning saying
    which file and why, unless it is the first extraction). Small chunks (``chunk_size``) so that even 1,617
    training digits make enough chunks for the loader's mixing.

    Text: ``captions`` gives each image a caption (:mod:`halton.data.digits.captions`); ``text_embeddings``:
    ``online`` stores the captions only (the training step encodes them), ``precompute`` also stores their
    embeddings by ``text_encoder`` (``minilm``: the packaged all-MiniLM-L6-v2) at ``text_max_length`` tokens.
    ``text_dim`` / ``text_length``: the facts a text model config reads, checked against the encoder and the
    shards. Changing any of these makes the shards stale (they are made again)."""

    def __init__(self, root: str, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0, chunk_size: int = 32, shard_size: int = 256, pool_chunks: int = 16,
                 shuffle_chunks: int = 8, codebook_size: int = LEVELS, grid=(SIDE, SIDE), num_classes: int = CLASSES,
                 flip: bool = False, resampled: bool = False, with_keys: bool = False, verify_checksums: bool = False,
                 tokenizer: PixelTokenizer | None = None, captions: bool = False, text_embeddings: str = "online",
                 text_encoder: str = "minilm", text_max_length: int = 16, text_dim: int | None = None,
                 text_length: int | None = None):
        if tokenizer is not None and (type(tokenizer) is not PixelTokenizer or tokenizer.codebook_size != LEVELS):
            raise ValueError(f"the digits are tokenised by PixelTokenizer({LEVELS}); got {tokenizer!r}")
        if (codebook_size, [int(g) for g in grid], num_classes) != (LEVELS, [SIDE, SIDE], CLASSES):
            raise ValueError(f"the digits have codebook_size={LEVELS}, grid=[{SIDE}, {SIDE}], num_classes={CLASSES}; "
                             f"got {codebook_size}, {list(grid)}, {num_classes}")
        TextDataOptions(captions, text_embeddings, text_max_length, text_length)  # checks them
        super().__init__(root, batch_size=batch_size, num_workers=num_workers, flip=flip, resampled=resampled,
                         seed=seed, pool_chunks=pool_chunks, shuffle_chunks=shuffle_chunks, codebook_size=LEVELS,
                         grid=(SIDE, SIDE), num_classes=CLASSES, tokenizer=PixelTokenizer(LEVELS), with_keys=with_keys,
                         pin_memory=False, verify_checksums=verify_checksums, text_dim=text_dim,
                         text_length=text_length)
        self.val_fraction, self.chunk_size, self.shard_size = val_fraction, chunk_size, shard_size
        self.captions, self.text_embeddings = captions, text_embeddings
        self.text_encoder, self.text_max_length = text_encoder, text_max_length
        self._reference: DigitsDataModule | None = None

    def source(self, split: str) -> DigitsSource:
        return DigitsSource(split, self.val_fraction, self.seed, self.shard_size, captions=self.captions)

    def _wanted_text(self) -> dict:
        """What the manifest's ``text`` must say (its ``width`` is known only once the encoder is loaded)."""
        if self.text_embeddings == "online":
            return {}
        return {"embeddings": "precompute", "encoder": self.text_encoder, "max_length": self.text_max_length}

    def _why_stale(self, split: str) -> str | None:
        """None when the split's shards are current, else why they must be made again, naming the file ("" for a
        first extraction, which needs no word). Every shard is hashed: the digits shards are a few hundred KB."""
        folder = self.split_dir(split)
        path = folder / MANIFEST_NAME
        if not any(OWN_FILE.fullmatch(p.name) for p in folder.glob("*")):  # also when there is no folder
            return ""
        try:
            manifest = Manifest.load(folder)
        except FileNotFoundError:
            return f"{path} is missing (deleted, or an extraction there was interrupted)"
        except ValueError as error:  # ManifestMismatch: malformed; the message names the file
            return str(error)
        if (manifest.source, manifest.chunk_size, manifest.flipped) != (self.source(split).describe(),
                                                                        self.chunk_size, self.flip):
            return (f"{path} describes shards made from another split or layout (seed, val_fraction, shard_size, "
                    "chunk_size, flip or captions)")
        stored = {k: manifest.text[k] for k in ("embeddings", "encoder", "max_length") if k in manifest.text}
        if stored != self._wanted_text():
            wanted = (f"embeddings of {self.text_encoder} at {self.text_max_length} tokens"
                      if self.text_embeddings == "precompute" else "no text embeddings")
            return f"{path} describes shards with {manifest.describe_text()}; the data config asks for {wanted}"
        try:
            problems = manifest.check_files(folder, checksums=True)
        except ManifestMismatch as error:  # a shard is missing; the advice after "; " is for extract's users
            return str(error).split("; ")[0]
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        return f"shard {folder / problems[0]}{more}" if problems else None

    def prepare_data(self) -> None:
        """Extract each split whose shards are missing or stale (Lightning runs this on one process per node)."""
        stale = {split: reason for split in SPLITS if (reason := self._why_stale(split)) is not None}
        # the encoder is loaded (and its width checked) before any shard is deleted
        text_encoder = self._load_text_encoder() if stale and self.text_embeddings == "precompute" else None
        for split, reason in stale.items():
            folder = self.split_dir(split)
            if reason:
                log.warning("making the digits shards in %s again: %s", folder, reason)
            if folder.exists():  # start the split over: extraction would keep the shards that look finished
                for path in folder.iterdir():
                    if OWN_FILE.fullmatch(path.name):
                        path.unlink()
            extract_locally(self.source(split), self.tokenizer, folder, grid=[SIDE, SIDE], flip=self.flip,
                            chunk_size=self.chunk_size, batch_size=512, progress=False, text_encoder=text_encoder)

    def _load_text_encoder(self):
        from halton.text import TextEncoder

        encoder = TextEncoder(self.text_encoder, max_length=self.text_max_length, dtype="fp32")
        if self.text_dim is not None:
            encoder.check_width(self.text_dim, what="data.text_dim")
        return encoder

    def setup(self, stage: str | None = None) -> None:
        if not all((self.split_dir(s) / MANIFEST_NAME).is_file() for s in SPLITS):
            self.prepare_data()  # used outside a Trainer (tests, notebooks): nobody called prepare_data
        super().setup(stage)

    def _in_memory(self) -> DigitsDataModule:
        """The in-memory digits module's classifier (trained on the same training split)."""
        if self._reference is None:
            self._reference = DigitsDataModule(val_fraction=self.val_fraction, seed=self.seed)
        return self._reference

    def recognition_accuracy(self, images: torch.Tensor, requested) -> float:
        return self._in_memory().recognition_accuracy(images, requested)

    def recognised(self, images: torch.Tensor, requested) -> torch.Tensor:
        return self._in_memory().recognised(images, requested)
