"""An IterableDataset of ready batches read from code shards with webdataset.

Epoch mode (default): each rank and DataLoader worker reads its own contiguous range of the (per-epoch
shuffled) samples (see :mod:`halton.data.reading.partition`), so within an epoch every sample of a rank's partition
appears exactly once, the ranks' partitions are disjoint, and every rank yields the same number of batches.
Resampled mode (``resampled=True``): an endless stream for step-based training; each rank and worker draws shards
with replacement from its own seeded stream (webdataset's ``ResampledShards``).

Either way: shards -> chunks (webdataset's tar reader) -> chunk shuffle buffer -> :class:`ChunkMixer` (pool,
permutation, batches). A shard that cannot be read (truncated, corrupted, not matching the manifest) is skipped
with a warning naming it; the count is kept in shared memory for the data module to log. With
``verify_checksums``, so is a shard whose SHA-256 differs from the manifest's (a change that keeps the file's size
and structure), before any of its samples is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from halton.data.format.chunks import BadChunk, chunk_name, decode_chunk
from halton.data.format.manifest import Manifest
from halton.data.reading.epoch_loader import resume_position
from halton.data.reading.mixing import ChunkMixer
from halton.data.reading.partition import batches_per_rank, plan_reader, worker_sizes

log = logging.getLogger("halton.data")


class CodeShardStream(IterableDataset):
    """Batches (dicts) from the shards of ``root`` described by ``manifest``; use with ``DataLoader(batch_size=None)``.

    ``rank``/``world_size`` are those of the process that builds the DataLoader (worker processes do not
    always see torch.distributed), ``num_workers`` that of its DataLoader.
    """

    def __init__(self, root: str | Path, manifest: Manifest, batch_size: int, *, shuffle: bool = True,
                 resampled: bool = False, drop_last: bool = True, flip: bool = False, pool_chunks: int = 16,
                 shuffle_chunks: int = 8, seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 with_keys: bool = False, verify_checksums: bool = False):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is out of range; allowed: >= 1")
        if pool_chunks < 1 or shuffle_chunks < 1:
            raise ValueError(f"pool_chunks={pool_chunks}, shuffle_chunks={shuffle_chunks}; allowed: >= 1")
        if flip and not manifest.flipped:
            raise ValueError(f"flip=true needs flipped codes, which the shards in {root} do not hold")
        if resampled and not shuffle:
            raise ValueError("resampled=true draws shards at random; it cannot be combined with shuffle=false")
        self.root, self.manifest = Path(root), manifest
        self.batch_size, self.shuffle, self.resampled, self.drop_last = batch_size, shuffle, resampled, drop_last
        self.flip, self.pool_chunks, self.shuffle_chunks, self.seed = flip, pool_chunks, shuffle_chunks, seed
        self.rank, self.world_size, self.num_workers, self.with_keys = rank, world_size, num_workers, with_keys
        self.grid, self.codebook_size = list(manifest.grid), manifest.codebook_size
        self.chunk_sizes = {s.name: s.chunks for s in manifest.shards}
        self.checksums = {s.name: s.sha256 for s in manifest.shards} if verify_checksums else None
        # Shared memory: the DataLoader's main process sets the epoch, its workers (forked or spawned, persistent
        # or not) read it; the workers count unreadable shards, the main process reads the count.
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self._skipped = torch.zeros(1, dtype=torch.long).share_memory_()
        self._skip = torch.zeros(1, dtype=torch.long).share_memory_()  # batches to drop (mid-epoch resume)
        if manifest.samples // world_size == 0:
            raise ValueError(f"{root} holds {manifest.samples} samples, fewer than the {world_size} ranks")

    # ------------------------------------------------------------------ bookkeeping
    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def set_skip(self, batches: int) -> None:
        """The next epoch starts after its first ``batches`` batches (over this rank's workers). An endless
        (resampled) stream does not replay what it skips, which could be millions of batches: it starts a fresh
        draw seeded by that position instead (deterministic, but not the batches the uninterrupted run had)."""
        self._skip[0] = batches

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @property
    def skipped_shards(self) -> int:
        return int(self._skipped[0])

    def __len__(self) -> int:
        """Batches per epoch of this rank (the same on every rank); an endless stream has no length."""
        if self.resampled:
            raise TypeError("a resampled stream is endless")
        return batches_per_rank(self.manifest, self.world_size, self.num_workers, self.batch_size, self.drop_last)

    # ------------------------------------------------------------------ reading
    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(self.num_workers, 1):
            raise ValueError(f"the stream was planned for {self.num_workers} workers but runs in {workers}")
        skip = int(self._skip[0])
        if not self.resampled and skip:
            # resumed mid-epoch: this worker plays the part of the one that hands out the next batch (and so on)
            sizes = worker_sizes(self.manifest.samples // self.world_size, workers, self.batch_size, self.drop_last)
            skips, first = resume_position(skip, [b for _, b in sizes])
            worker = (worker + first) % workers
            skip = skips[worker]
        position = skip if self.resampled else 0
        rng = np.random.default_rng([self.seed, self.epoch, position, self.rank, worker])
        pool_samples = self.pool_chunks * self.manifest.chunk_size
        if self.resampled:
            urls = [str(self.root / s.name) for s in self.manifest.shards]
            shard_seed = int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])
            shards = wds.ResampledShards(urls, seed=shard_seed, deterministic=True,
                                         worker_seed=lambda: self.rank * 1000 + worker)
            stages = [shards, self._read_whole_shards]
            mixer = ChunkMixer(self.batch_size, shuffle=True, pool_samples=pool_samples, drop_last=True,
                               flip=self.flip, rng=rng, with_keys=self.with_keys)
        else:
            plan = plan_reader(self.manifest, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle,
                               rank=self.rank, world_size=self.world_size, worker=worker, num_workers=workers,
                               batch_size=self.batch_size, drop_last=self.drop_last)
            if plan.batches == 0:
                return iter(())
            wanted = plan.lookup()
            stages = [wds.SimpleShardList([str(self.root / name) for name in plan.shards()]),
                      lambda sources: self._read_planned(sources, wanted)]
            mixer = ChunkMixer(self.batch_size, shuffle=self.shuffle, pool_samples=pool_samples,
                               drop_last=self.drop_last, flip=self.flip, rng=rng, batches=plan.batches,
                               skip=skip, with_keys=self.with_keys, fallback=self._any_readable_chunk)
        if self.shuffle:
            stages.append(wds.shuffle(self.shuffle_chunks, self.shuffle_chunks,
                                      rng=random.Random(int(rng.integers(2**63)))))
        stages.append(mixer)
        return iter(wds.DataPipeline(*stages))

    def _any_readable_chunk(self):
        """The first chunk that can be read from any shard: stand-in samples for a reader whose own shards were
        all unreadable, so that its rank still yields its share of batches."""
        sources = ({"url": str(self.root / shard.name)} for shard in self.manifest.shards)
        return next(iter(self._read(sources, None)), None)

    def _read_planned(self, sources, wanted: dict[tuple[str, int], tuple[int, int]]):
        return self._read(sources, wanted)

    def _read_whole_shards(self, sources):
        return self._read(sources, None)

    def _read(self, sources, wanted: dict[tuple[str, int], tuple[int, int]] | None):
        """The chunks of each source shard in order (only the planned pieces of them when ``wanted`` is given;
        other chunks are not decoded). A shard that fails is skipped from the failure on, with a warning."""
        last_wanted: dict[str, int] = {}
        for name, index in wanted or ():
            last_wanted[name] = max(index, last_wanted.get(name, -1))
        for source in sources:
            url = source["url"]
            name = Path(url).name
            expected = self.chunk_sizes.get(name, [])
            # A planned reader stops after its last piece of the shard (the next reader's range starts there).
            last = len(expected) - 1 if wanted is None else last_wanted.get(name, -1)
            seen = 0
            try:
                for index, sample in enumerate(self._samples(url, name)):
                    seen = index + 1
                    if index >= len(expected) or sample["__key__"] != chunk_name(index):
                        raise BadChunk(f"chunk {sample['__key__']!r} at position {index} does not match the "
                                       f"manifest ({len(expected)} chunks, {chunk_name(0)} ...)")
                    span = (0, expected[index]) if wanted is None else wanted.get((name, index))
                    if span is None:
                        continue
                    chunk = decode_chunk(sample, self.grid, self.codebook_size, keys=self.with_keys,
                                         text_shape=self.manifest.text_shape)
                    if len(chunk) != expected[index]:
                        raise BadChunk(f"chunk {sample['__key__']} holds {len(chunk)} samples, the manifest says "
                                       f"{expected[index]}")
                    yield chunk.slice(*span)
                    if index == last:
                        break
                if seen != last + 1:
                    raise BadChunk(f"it ends after {seen} chunks, the manifest says {len(expected)}")
            except Exception as error:  # truncated tar, garbled member, mismatch: skip the rest of this shard
                self._report_bad_shard(url, error)

    def _samples(self, url: str, name: str):
        """The shard's webdataset samples (its chunks). With checksums, the whole file is read and hashed before
        any of it is parsed (from memory: one read), so a shard that fails the check yields nothing."""
        if self.checksums is None:
            return wds.tarfile_samples([{"url": url}])
        data = Path(url).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.checksums.get(name):
            raise ValueError("its SHA-256 differs from the manifest's (the file was changed or damaged)")
        return group_by_keys(tar_file_expander([{"url": url, "stream": io.BytesIO(data)}]))

    def _report_bad_shard(self, url: str, error: Exception) -> None:
        self._skipped[0] += 1
        reason = str(error.args[0]) if error.args else type(error).__name__
        log.warning("skipping unreadable shard %s: %s (%d shard reads skipped so far on rank %d)",
                    url, reason.split(" @ ")[0], int(self._skipped[0]), self.rank)
