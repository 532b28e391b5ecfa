"""Batched in-memory data sets of token codes: one tensor index per batch, no per-sample Python work."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class CodesDataset(Dataset):
    """Codes [N, H, W] with labels [N]; ``__getitems__`` returns a whole batch as a dict of tensors.

    ``flip`` mirrors each sample horizontally with probability 0.5 (the paper's class-to-image augmentation, for
    tokenizers whose codes flip with the image, i.e. codes extracted from flipped images must be used otherwise).
    """

    def __init__(self, codes: torch.Tensor, labels: torch.Tensor, flip: bool = False):
        if codes.shape[0] != labels.shape[0]:
            raise ValueError(f"{codes.shape[0]} code grids but {labels.shape[0]} labels")
        self.codes, self.labels, self.flip = codes, labels, flip

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        codes = self.codes[index]
        if self.flip:
            flipped = torch.rand(len(index)) < 0.5
            codes = torch.where(flipped[:, None, None], codes.flip(-1), codes)
        return {"codes": codes, "labels": self.labels[index]}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


def pass_through(batch):
    """collate_fn for data sets that already return whole batches."""
    return batch
