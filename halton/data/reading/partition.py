"""Which samples each rank and each DataLoader worker reads in an epoch, planned from the manifest.

The shards are put in an order (shuffled with a seed shared by every rank, different each epoch) and their
samples laid end to end; rank r of W reads the r-th of W equal contiguous ranges (the last ``N mod W`` samples
of the order are left out of that epoch, a different few each epoch), and a rank's range is cut the same way
between its workers. Equal ranges are what keep DDP ranks in step: every rank yields exactly the same number
of batches, so no rank waits forever in a collective for a batch that another rank does not have. Ranges are
contiguous, so a shard is opened by at most two readers (the ones whose ranges meet inside it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from halton.data.format.manifest import Manifest


@dataclass(frozen=True)
class Piece:
    """Samples ``start:stop`` of chunk ``chunk`` of shard ``shard`` (its name)."""

    shard: str
    chunk: int
    start: int
    stop: int


@dataclass
class ReaderPlan:
    pieces: list[Piece]
    samples: int
    batches: int

    def shards(self) -> list[str]:
        """The shards to open, in reading order, each once."""
        return list(dict.fromkeys(piece.shard for piece in self.pieces))

    def lookup(self) -> dict[tuple[str, int], tuple[int, int]]:
        return {(p.shard, p.chunk): (p.start, p.stop) for p in self.pieces}


def shard_order(manifest: Manifest, seed: int, epoch: int, shuffle: bool) -> list[int]:
    indices = np.arange(len(manifest.shards))
    if shuffle:
        indices = np.random.default_rng([seed, epoch]).permutation(indices)
    return indices.tolist()


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def worker_sizes(rank_samples: int, num_workers: int, batch_size: int, drop_last: bool
                 ) -> list[tuple[int, int]]:
    """(samples, batches) per worker of one rank. With ``drop_last`` the rank's batches are shared out
    whole, and the fewer-than-a-batch leftover samples are read too (dropped after mixing, so which samples
    miss the epoch is random); without, samples are shared out and each worker ends with a partial batch."""
    if drop_last:
        batches = split_evenly(rank_samples // batch_size, num_workers)
        leftover = split_evenly(rank_samples - sum(batches) * batch_size, num_workers)
        return [(b * batch_size + extra, b) for b, extra in zip(batches, leftover)]
    return [(n, -(-n // batch_size)) for n in split_evenly(rank_samples, num_workers)]


def check_batch_fits(batch_size: int, samples: int, world_size: int, data: str) -> None:
    """Refuse a training batch larger than a rank's share of the training set: every epoch would drop its only,
    incomplete batch, and training would end at step 0 without a checkpoint."""
    per_rank = samples // world_size
    if batch_size > per_rank:
        share = f", {per_rank} per rank on {world_size} ranks" if world_size > 1 else ""
        raise ValueError(f"data.batch_size={batch_size} is larger than the training set ({samples} samples in "
                         f"{data}{share}); allowed: data.batch_size <= {per_rank}")


def batches_per_rank(manifest: Manifest, world_size: int, num_workers: int, batch_size: int,
                     drop_last: bool) -> int:
    rank_samples = manifest.samples // world_size
    return sum(b for _, b in worker_sizes(rank_samples, max(num_workers, 1), batch_size, drop_last))


def plan_reader(manifest: Manifest, *, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int,
                worker: int, num_workers: int, batch_size: int, drop_last: bool) -> ReaderPlan:
    """The pieces of chunks that worker ``worker`` of rank ``rank`` reads in ``epoch``, in reading order."""
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"rank {rank} of {world_size}, worker {worker} of {num_workers}: out of range")
    rank_samples = manifest.samples // world_size
    sizes = worker_sizes(rank_samples, num_workers, batch_size, drop_last)
    start = rank * rank_samples + sum(n for n, _ in sizes[:worker])
    count, batches = sizes[worker]
    stop = start + count
    pieces, offset = [], 0
    for index in shard_order(manifest, seed, epoch, shuffle):
        shard = manifest.shards[index]
        if offset >= stop:
            break
        if offset + shard.samples <= start:
            offset += shard.samples
            continue
        for chunk, size in enumerate(shard.chunks):
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                pieces.append(Piece(shard.name, chunk, lo - offset, hi - offset))
            offset += size
    return ReaderPlan(pieces, count, batches)
