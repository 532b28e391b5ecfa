"""From a stream of chunks to batches, with numpy only: no per-sample Python work.

Shuffled reading keeps a pool of samples; each time it holds ``pool_chunks`` chunks' worth, the pool is
permuted, half of it is cut into batches and the other half stays to mix with the next chunks. Every batch is
therefore a uniform draw from at least ``pool_chunks / 2`` chunks' worth of samples, which come from at least
that many different chunks (tested: batches of 64 from pools of 16 chunks mix samples of >= 8 chunks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from halton.data.format.chunks import Chunk


class ReaderStarved(RuntimeError):
    """No shard at all could be read: there is nothing to make batches from."""


def to_batch(chunk: Chunk, flip: bool, rng: np.random.Generator, with_keys: bool) -> dict:
    codes = chunk.codes
    if flip:
        # Each sample takes the codes of its mirrored image with probability 1/2 (the paper's augmentation).
        mirrored = rng.random(len(chunk)) < 0.5
        codes = np.where(mirrored[:, None, None], chunk.flipped, codes)
    batch = {"codes": torch.from_numpy(codes.astype(np.int64)),
             "labels": torch.from_numpy(chunk.labels.astype(np.int64))}
    if chunk.captions is not None:
        batch["captions"] = chunk.captions.tolist()
    if chunk.text_emb is not None:
        # the stored bfloat16 bits, reinterpreted without a copy (int16: torch's fully supported 2-byte integer)
        batch["text_emb"] = torch.from_numpy(np.ascontiguousarray(chunk.text_emb).view(np.int16)).view(torch.bfloat16)
        batch["text_mask"] = torch.from_numpy(np.ascontiguousarray(chunk.text_mask))
    if with_keys:
        batch["keys"] = chunk.keys.tolist()
    return batch


class ChunkMixer:
    """Callable pipeline stage: chunks in, batch dicts out (``codes`` [B,h,w] long, ``labels`` [B] long, plus
    ``captions`` when the shards have them, ``text_emb`` [B,L,D] bfloat16 and ``text_mask`` [B,L] bool when they
    hold precomputed text embeddings, and ``keys`` when asked).

    ``batches``: the exact number of batches to yield (an epoch of a planned reader). If shards turned out to be
    unreadable and the stream ends short, the missing batches are drawn again from the samples of the last
    pool (or, if none of this reader's shards could be read, from ``fallback()``: samples of any readable shard),
    so that every DDP rank still runs the same number of steps. ``None``: as many as the stream gives.
    ``skip``: the first batches are made (so every random draw after them is the same) but not yielded: a run
    resumed mid-epoch continues with exactly the batches the uninterrupted run had next.
    """

    def __init__(self, batch_size: int, *, shuffle: bool, pool_samples: int, drop_last: bool, flip: bool,
                 rng: np.random.Generator, batches: int | None = None, skip: int = 0, with_keys: bool = False,
                 fallback: Callable[[], Chunk | None] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is out of range; allowed: >= 1")
        self.batch_size, self.shuffle, self.drop_last, self.flip = batch_size, shuffle, drop_last, flip
        self.pool_samples = max(pool_samples, 2 * batch_size)
        self.rng, self.batches, self.skip, self.with_keys = rng, batches, skip, with_keys
        self.fallback = fallback

    def __call__(self, chunks: Iterable[Chunk]) -> Iterator[dict]:
        for index, batch in enumerate(self._batches(chunks)):
            if index >= self.skip:
                yield batch

    def _batches(self, chunks: Iterable[Chunk]) -> Iterator[dict]:
        emitted, reserve = 0, None
        for pool in self._pools(chunks):
            reserve = pool
            for start in range(0, len(pool), self.batch_size):
                if self.batches is not None and emitted == self.batches:
                    return
                part = pool.slice(start, min(start + self.batch_size, len(pool)))
                if len(part) < self.batch_size and self.drop_last:
                    break
                yield to_batch(part, self.flip, self.rng, self.with_keys)
                emitted += 1
        if self.batches is None or emitted >= self.batches:
            return
        if (reserve is None or len(reserve) == 0) and self.fallback is not None:
            reserve = self.fallback()
        if reserve is None or len(reserve) == 0:
            raise ReaderStarved("no shard could be read; see the warnings above")
        while emitted < self.batches:  # stand-ins for the samples of unreadable shards
            index = self.rng.integers(0, len(reserve), self.batch_size)
            yield to_batch(reserve.take(index), self.flip, self.rng, self.with_keys)
            emitted += 1

    def _pools(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Consecutive groups of samples, each cut into batches in order (the last may hold a partial batch)."""
        pending, size = [], 0
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            pending.append(chunk)
            size += len(chunk)
            if size < self.pool_samples:
                continue
            pool = Chunk.concatenate(pending)
            if self.shuffle:
                pool = pool.take(self.rng.permutation(len(pool)))
            # Hand on whole batches covering about half the pool; keep the rest to mix with what comes next.
            ready = max(1, (len(pool) - self.pool_samples // 2) // self.batch_size) * self.batch_size
            yield pool.slice(0, ready)
            pending, size = [pool.slice(ready, len(pool))], len(pool) - ready
        if size:
            pool = Chunk.concatenate(pending)
            if self.shuffle:
                pool = pool.take(self.rng.permutation(len(pool)))
            yield pool
