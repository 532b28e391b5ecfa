"""scikit-learn's bundled handwritten digits (1,797 images, 8x8 pixels, 17 grey levels, 10 classes) as codes held in
memory: the seeded train/val split, and the data module with its digit classifier."""

from __future__ import annotations

import re
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from halton.data.digits.captions import WORDS
from halton.data.reading.codes_dataset import CodesDataset, pass_through
from halton.data.reading.partition import check_batch_fits
from halton.data.reading.resumable_loader import ResumableLoader
from halton.tokenizers import PixelTokenizer

LEVELS, SIDE, CLASSES = 17, 8, 10


def digit_named(prompt: str) -> int:
    """The digit a prompt names, in words or as a numeral ("a handwritten seven", "the digit 7"); -1 if none."""
    for token in re.findall(r"[a-z]+|\d", prompt.lower()):
        if token.isdigit():
            return int(token)
        if token in WORDS:
            return WORDS.index(token)
    return -1


def load_digits_split(val_fraction: float = 0.1, seed: int = 0):
    """Images [N,1,8,8] in [-1, 1] and labels, split by a seeded permutation into (train, val)."""
    from sklearn.datasets import load_digits

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} is out of range; allowed: 0 < val_fraction < 1")
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1) / (LEVELS - 1) * 2 - 1
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_val = round(len(labels) * val_fraction)
    val, train = order[:num_val], order[num_val:]
    return (images[train], labels[train]), (images[val], labels[val])


class DigitsDataModule(pl.LightningDataModule):
    """The embedded class-conditional data set: digits tokenised losslessly, one token per pixel (8x8 grid)."""

    codebook_size, grid, num_classes = LEVELS, (SIDE, SIDE), CLASSES

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.1, seed: int = 0, num_workers: int = 0,
                 codebook_size: int = LEVELS, grid: tuple[int, int] = (SIDE, SIDE), num_classes: int = CLASSES):
        super().__init__()
        # The config states these facts so model configs can read them; they cannot be changed.
        if (codebook_size, tuple(grid), num_classes) != (LEVELS, (SIDE, SIDE), CLASSES):
            raise ValueError(f"the digits have codebook_size={LEVELS}, grid=[{SIDE}, {SIDE}], num_classes={CLASSES}; "
                             f"got {codebook_size}, {list(grid)}, {num_classes}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is out of range; allowed: >= 1")
        self.batch_size, self.val_fraction, self.seed, self.num_workers = batch_size, val_fraction, seed, num_workers
        self.tokenizer = PixelTokenizer(LEVELS)
        self._classifier = None

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            (train_x, train_y), (val_x, val_y) = load_digits_split(self.val_fraction, self.seed)
            self.train_images, self.train_labels = train_x, train_y
            self.train_set = CodesDataset(self.tokenizer.encode(train_x), train_y)
            self.val_set = CodesDataset(self.tokenizer.encode(val_x), val_y)
        if stage == "fit":  # before the model is set up: Lightning calls this first in fit
            check_batch_fits(self.batch_size, len(self.train_set), self.trainer.world_size if self.trainer else 1,
                             f"the digits' training split (val_fraction={self.val_fraction})")

    def _loader(self, dataset: CodesDataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=shuffle,
                          num_workers=self.num_workers, collate_fn=pass_through,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> ResumableLoader:
        # Resumes mid-epoch exactly (order from the run's seed and the epoch; Lightning saves its place).
        return ResumableLoader(self.train_set, self.batch_size, num_workers=self.num_workers,
                               collate_fn=pass_through)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def recognition_accuracy(self, images: torch.Tensor, requested: torch.Tensor | Sequence) -> float:
        """Fraction of ``images`` (in [-1, 1]) that an SVM trained on the training split reads as the digit
        ``requested`` for each: class ids, or prompts naming a digit (:func:`digit_named`)."""
        return float(self.recognised(images, requested).float().mean())

    def recognised(self, images: torch.Tensor, requested: torch.Tensor | Sequence) -> torch.Tensor:
        """Per image [B] bool: does the digits classifier read the requested digit (a class id or a prompt)?"""
        labels = np.array([digit_named(v) if isinstance(v, str) else int(v) for v in requested])
        if self._classifier is None:
            from sklearn.svm import SVC

            self.setup()
            self._classifier = SVC(gamma=0.001).fit(self._pixels(self.train_images), self.train_labels.numpy())
        predicted = self._classifier.predict(self._pixels(images))
        return torch.from_numpy(predicted == labels)

    @staticmethod
    def _pixels(images: torch.Tensor) -> np.ndarray:
        return ((images.detach().cpu().float() + 1) / 2 * (LEVELS - 1)).reshape(len(images), -1).numpy()
