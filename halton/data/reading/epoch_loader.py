"""The DataLoader of a :class:`~halton.data.reading.shard_stream.CodeShardStream`: epochs, and exact mid-epoch resume.

It follows the contract of :mod:`halton.data.reading.resumable_loader` and keeps its place with
:class:`~halton.data.reading.loader_position.LoaderPosition`: ``state_dict()`` names the next batch to train on
(Lightning reads a loader with a length on demand, so every batch handed out has been trained on; it fetches one
batch ahead from an endless one, which is then not counted), an epoch's batches depend only on (seed, epoch, rank,
world size, workers), and ``load_state_dict`` makes the next iteration of that epoch skip the batches already
trained on. The stream still draws the skipped batches (they are cheap) so that every random choice after them is
the one the uninterrupted run made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from halton.data.reading.loader_position import LoaderPosition


def resume_position(skip: int, worker_batches: list[int]) -> tuple[list[int], int]:
    """Where a DataLoader's stream of batches stands after ``skip`` batches: how many of each worker's batches
    were among them, and which worker hands out the next one. The DataLoader takes one batch from each worker that
    still has one, in worker order, round after round: a cyclic order, so a restarted DataLoader reproduces the
    rest of the sequence when its worker 0 plays the part of that next worker (and so on around the cycle)."""
    taken = [0] * len(worker_batches)
    remaining, worker = skip, 0
    while remaining > 0 and any(t < b for t, b in zip(taken, worker_batches)):
        if taken[worker] < worker_batches[worker]:
            taken[worker] += 1
            remaining -= 1
        worker = (worker + 1) % len(worker_batches)
    return taken, worker


class EpochDataLoader(DataLoader):
    """Tells its stream which epoch starts (workers read it from shared memory, so persistent workers see it),
    and resumes mid-epoch. ``epoch_source`` gives the epoch (the Trainer's ``current_epoch``); without it the
    loader counts its own iterations."""

    def __init__(self, *args, epoch_source: Callable[[], int] | None = None, **kwargs):
        # Each iteration draws a base seed for its workers; from its own generator, never from the global one,
        # which belongs to the training step (masking, label dropout) and is restored exactly on resume.
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)
        self.dataset.num_workers = self.num_workers  # the stream plans its readers (and its length) for them
        self.epoch_source = epoch_source
        self._iterations = 0
        self._resume: tuple[int, int] | None = None   # (epoch, batches already trained) from load_state_dict
        self.position = LoaderPosition("EpochDataLoader")

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing happens until the first batch is asked for (an iter() only to check costs nothing).
        epoch = self.epoch_source() if self.epoch_source is not None else self._iterations
        self._iterations += 1
        skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        stream = self.dataset
        stream.set_epoch(epoch)
        stream.set_skip(skip)
        yield from self.position.count(super().__iter__(), epoch, skip)

    def state_dict(self) -> dict[str, int]:
        stream = self.dataset
        ahead = 1 if stream.resampled else 0  # the batch Lightning fetched ahead of an endless loader
        return self.position.state_dict(stream.seed, stream.batch_size, stream.world_size, ahead)

    def load_state_dict(self, state: dict[str, int]) -> None:
        stream = self.dataset
        seed, epoch, trained = self.position.read_state(state, stream.batch_size, stream.world_size)
        stream.seed = seed  # the order of the interrupted run, whatever this run's data.seed says
        self._resume = (epoch, trained)
        if self.epoch_source is None:  # counting its own epochs: continue from the saved one
            self._iterations = self._resume[0]
