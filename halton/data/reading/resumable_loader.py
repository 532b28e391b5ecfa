"""A training loader over a data set in memory that resumes mid-epoch exactly, and the contract of resuming.

What a data module must provide so that a resumed run sees exactly the batches the uninterrupted run would have:

1. Its ``train_dataloader()`` returns an object with ``state_dict()`` and ``load_state_dict(state)`` (Lightning's
   ``_Stateful`` protocol): Lightning stores ``state_dict()`` in every checkpoint and calls ``load_state_dict``
   on resume, before it asks for the first batch.
2. The state names the place of the next batch to *train on*. A loader with a length (``__len__``: batches per
   rank and epoch) is read on demand: Lightning fetches one batch ahead only from loaders without a length
   (``lightning.pytorch.loops.fetchers._PrefetchDataFetcher``), so with a length every batch handed out when a
   checkpoint is written has been trained on. A loader without a length must not count the batch fetched ahead.
3. The order of an epoch is a function of (seed, epoch, rank, world size) only, so it can be drawn again after a
   restart and the consumed batches skipped without reading them. The loader learns the epoch before iterating it:
   Lightning calls ``set_epoch(epoch)`` on a ``sampler`` attribute before every epoch (what ``ResumableLoader``
   uses), or the loader asks the Trainer for ``current_epoch``.
4. Nothing on the way draws from the global random generators (``torch.rand`` in a data set, a DataLoader without
   its own ``generator``): they belong to the training step (masking, label dropout), whose state
   ``RNGStateCheckpoint`` saves. Random augmentation must be seeded from (seed, epoch, sample index).

``ResumableLoader`` does all of this for map-style data sets held in memory (``CodesDataset``). A streaming (shard)
loader satisfies the same contract by shuffling shards with a generator seeded from (seed, epoch), splitting them
over ranks and workers deterministically, and fast-forwarding over the consumed batches in ``load_state_dict``
(:class:`~halton.data.reading.epoch_loader.EpochDataLoader`). Both keep their place, and write and read their state,
with :class:`~halton.data.reading.loader_position.LoaderPosition`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from halton.data.reading.loader_position import LoaderPosition


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one epoch (seed + epoch would correlate neighbouring runs and epochs)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochShuffle:
    """The order of the samples in each epoch: a seeded permutation, split over the ranks like DistributedSampler
    (rank r takes every world_size-th sample), cut into whole batches (the incomplete last batch is dropped, so
    every rank runs the same number of steps)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is out of range; allowed: >= 1")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self, world_size: int) -> int:
        return self.num_samples // world_size // self.batch_size

    def batches(self, epoch: int, rank: int, world_size: int) -> torch.Tensor:
        """Sample indices [num_batches, batch_size] of ``rank`` in ``epoch``."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=generator)
        count = self.num_batches(world_size) * self.batch_size
        return order[rank::world_size][:count].view(-1, self.batch_size)


class ResumableLoader:
    """Shuffled batches of a map-style data set whose place in the epoch Lightning saves in checkpoints, so that a
    run resumed mid-epoch continues with the very next batch (see the module docstring for the contract).

    ``seed`` defaults to ``torch.initial_seed()``: the run's seed after ``seed_everything``, the same on every rank.
    Each epoch builds a ``DataLoader`` over that epoch's index batches (``num_workers`` worker processes, started
    per epoch), with its own generator so it never draws from the global one.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int | None = None, num_workers: int = 0,
                 collate_fn: Callable[[Any], Any] | None = None, pin_memory: bool = False):
        self.dataset = dataset
        self.sampler = EpochShuffle(len(dataset), batch_size, torch.initial_seed() if seed is None else seed)
        self.batch_size, self.num_workers, self.collate_fn, self.pin_memory = (batch_size, num_workers, collate_fn,
                                                                               pin_memory)
        self._resume_at = 0       # batch of the next epoch iterated to start from (set by load_state_dict)
        self.position = LoaderPosition("ResumableLoader")

    def __len__(self) -> int:
        return self.sampler.num_batches(rank_and_world_size()[1])

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing is read until the first batch is asked for (Lightning calls iter() once just to check).
        epoch, start = self.sampler.epoch, self._resume_at
        self._resume_at = 0
        rank, world_size = rank_and_world_size()
        batches = self.sampler.batches(epoch, rank, world_size)[start:]
        loader = DataLoader(self.dataset, batch_sampler=batches.tolist(), num_workers=self.num_workers,
                            collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(epoch_seed(self.sampler.seed, epoch)))
        yield from self.position.count(loader, epoch, start)

    def state_dict(self) -> dict[str, int]:
        # Every batch handed out has been trained on: Lightning reads a loader with a length on demand (contract 2).
        return self.position.state_dict(self.sampler.seed, self.batch_size, rank_and_world_size()[1])

    def load_state_dict(self, state: dict[str, int]) -> None:
        world_size = rank_and_world_size()[1]
        self.sampler.seed, epoch, start = self.position.read_state(state, self.batch_size, world_size)
        if start >= self.sampler.num_batches(world_size):  # saved at the end of an epoch: go on with the next one
            epoch, start = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self._resume_at = start
