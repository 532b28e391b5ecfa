"""The digits through the whole shard pipeline: extracted into code shards on first use (``prepare_data``), then
loaded like any other shards. What ``python train.py experiment=digits`` and the demo run."""

from __future__ import annotations

import re

import torch

from halton.data.digits import CLASSES, LEVELS, SIDE, DigitsDataModule
from halton.data.extraction import extract_locally
from halton.data.manifest import Manifest
from halton.data.shard_datamodule import CodeShardsDataModule
from halton.data.sources import DigitsSource
from halton.tokenizers import PixelTokenizer

SPLITS = ("train", "val")
OWN_FILE = re.compile(r"\d{6}\.(tar|json)|manifest\.json")  # only what extraction writes is ever deleted


class DigitsShardsDataModule(CodeShardsDataModule):
    """Shards of the seeded digits split (:func:`halton.data.digits.load_digits_split`) under ``root``, made by
    :meth:`prepare_data` when they are missing or were made from another split. Small chunks (``chunk_size``)
    so that even 1,617 training digits make enough chunks for the loader's mixing."""

    def __init__(self, root: str, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0, chunk_size: int = 32, shard_size: int = 256, pool_chunks: int = 16,
                 shuffle_chunks: int = 8, codebook_size: int = LEVELS, grid=(SIDE, SIDE), num_classes: int = CLASSES,
                 flip: bool = False, resampled: bool = False, with_keys: bool = False,
                 tokenizer: PixelTokenizer | None = None):
        if tokenizer is not None and (type(tokenizer) is not PixelTokenizer or tokenizer.codebook_size != LEVELS):
            raise ValueError(f"the digits are tokenised by PixelTokenizer({LEVELS}); got {tokenizer!r}")
        if (codebook_size, [int(g) for g in grid], num_classes) != (LEVELS, [SIDE, SIDE], CLASSES):
            raise ValueError(f"the digits have codebook_size={LEVELS}, grid=[{SIDE}, {SIDE}], num_classes={CLASSES}; "
                             f"got {codebook_size}, {list(grid)}, {num_classes}")
        super().__init__(root, batch_size=batch_size, num_workers=num_workers, flip=flip, resampled=resampled,
                         seed=seed, pool_chunks=pool_chunks, shuffle_chunks=shuffle_chunks, codebook_size=LEVELS,
                         grid=(SIDE, SIDE), num_classes=CLASSES, tokenizer=PixelTokenizer(LEVELS), with_keys=with_keys,
                         pin_memory=False)
        self.val_fraction, self.chunk_size, self.shard_size = val_fraction, chunk_size, shard_size
        self._reference: DigitsDataModule | None = None

    def source(self, split: str) -> DigitsSource:
        return DigitsSource(split, self.val_fraction, self.seed, self.shard_size)

    def _is_current(self, split: str) -> bool:
        folder = self.split_dir(split)
        try:
            manifest = Manifest.load(folder)
        except (FileNotFoundError, ValueError):
            return False
        return (manifest.source == self.source(split).describe() and manifest.chunk_size == self.chunk_size
                and manifest.flipped == self.flip and not manifest.check_files(folder))

    def prepare_data(self) -> None:
        """Extract each split whose shards are missing or stale (Lightning runs this on one process per node)."""
        for split in SPLITS:
            if self._is_current(split):
                continue
            folder = self.split_dir(split)
            if folder.exists():  # stale shards of another split or layout: start that split over
                for path in folder.iterdir():
                    if OWN_FILE.fullmatch(path.name):
                        path.unlink()
            extract_locally(self.source(split), self.tokenizer, folder, grid=[SIDE, SIDE], flip=self.flip,
                            chunk_size=self.chunk_size, batch_size=512, progress=False)

    def setup(self, stage: str | None = None) -> None:
        if not all((self.split_dir(s) / "manifest.json").is_file() for s in SPLITS):
            self.prepare_data()  # used outside a Trainer (tests, notebooks): nobody called prepare_data
        super().setup(stage)

    def recognition_accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """The in-memory digits module's classifier (trained on the same training split)."""
        if self._reference is None:
            self._reference = DigitsDataModule(val_fraction=self.val_fraction, seed=self.seed)
        return self._reference.recognition_accuracy(images, labels)
