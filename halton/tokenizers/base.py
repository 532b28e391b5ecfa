"""The tokenizer interface: images <-> grids of discrete codes."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Tokenizer(nn.Module, ABC):
    """``encode(images [B,C,H,W] in [-1, 1]) -> codes [B,h,w]`` and ``decode(codes) -> images in [-1, 1]``."""

    codebook_size: int
    channels: int
    downsample: int  # image pixels per token along each side

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...

    def recipe(self) -> dict:
        """This tokenizer as Hydra builds it (``_target_`` and plain arguments, weights by path or hub name): what an
        export's pipeline.json records."""
        raise NotImplementedError(f"{type(self).__name__} cannot be recorded in an export's pipeline.json")
