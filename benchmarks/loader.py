"""Loader throughput on one core: code shards (chunks of ~1000 samples per tar member) against the reference
layout (one pickle file per sample), and webdataset with one tar member per sample.

    taskset -c 0 python benchmarks/loader.py --samples 100000 --grid 16

One core: torch and numpy are limited to one thread and the loaders run in this process (num_workers=0); with
taskset the process is pinned too. Warm cache: every layout is read once before it is timed. Files opened are
counted with a Python audit hook (every open() of a path during the timed pass).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from halton.data.chunks import Chunk, split_into_chunks, strings, write_shard
from halton.data.manifest import Manifest
from halton.data.shard_stream import CodeShardStream


class OpenCounter:
    """Counts files opened (audit event "open") while ``active``."""

    def __init__(self):
        self.active, self.count = False, 0
        sys.addaudithook(self._hook)

    def _hook(self, event, args):
        if self.active and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            self.count += 1


def make_data(samples: int, grid: int, codebook: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook, (samples, grid, grid), dtype=np.uint16)
    labels = rng.integers(0, 1000, samples, dtype=np.int32)
    keys = [f"img{i:07d}" for i in range(samples)]
    return codes, labels, keys


def write_ours(folder: Path, codes, labels, keys, chunk_size: int, shard_chunks: int, codebook: int) -> Manifest:
    whole = Chunk(codes, labels, strings(keys))
    chunks = split_into_chunks(whole, chunk_size)
    records = []
    for index, start in enumerate(range(0, len(chunks), shard_chunks)):
        records.append(write_shard(folder / f"{index:06d}.tar", chunks[start:start + shard_chunks]))
    manifest = Manifest(grid=list(codes.shape[1:]), codebook_size=codebook, num_classes=1000,
                        chunk_size=chunk_size, flipped=False, captions=False, tokenizer={"name": "random"},
                        image_size=None, source={"kind": "benchmark"}, shards=records)
    manifest.save(folder)
    return manifest


def write_pickles(folder: Path, codes, labels) -> list[Path]:
    """The reference layout: one pickle per sample holding its codes and label."""
    paths = []
    for i in range(len(codes)):
        path = folder / f"{i:07d}.pth"
        with open(path, "wb") as handle:
            pickle.dump({"code": codes[i], "y": int(labels[i])}, handle)
        paths.append(path)
    return paths


def write_per_sample_tars(folder: Path, codes, labels, keys, per_shard: int) -> list[str]:
    import io

    import webdataset as wds

    urls = []
    for index, start in enumerate(range(0, len(codes), per_shard)):
        url = str(folder / f"{index:06d}.tar")
        with wds.TarWriter(url, encoder=False) as tar:
            for i in range(start, min(start + per_shard, len(codes))):
                buffer = io.BytesIO()
                np.save(buffer, codes[i])
                tar.write({"__key__": keys[i], "codes.npy": buffer.getvalue(), "cls": str(labels[i]).encode()})
        urls.append(url)
    return urls


def read_ours(folder: Path, manifest: Manifest, batch_size: int) -> int:
    stream = CodeShardStream(folder, manifest, batch_size, shuffle=True, drop_last=True, num_workers=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)
    return sum(len(batch["labels"]) for batch in loader)


def read_pickles(paths: list[Path], batch_size: int) -> int:
    """As the reference does: a map-style data set, one file per sample, the DataLoader collating batches."""

    class PickleDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            with open(paths[index], "rb") as handle:
                sample = pickle.load(handle)
            return torch.from_numpy(sample["code"].astype(np.int64)), sample["y"]

    loader = torch.utils.data.DataLoader(PickleDataset(), batch_size=batch_size, shuffle=True, num_workers=0,
                                         drop_last=True)
    return sum(len(labels) for _, labels in loader)


def read_per_sample_tars(urls: list[str], batch_size: int) -> int:
    import webdataset as wds

    def decode(sample):
        import io
        return torch.from_numpy(np.load(io.BytesIO(sample["codes.npy"])).astype(np.int64)), int(sample["cls"])

    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None).shuffle(1000).map(decode)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    return sum(len(labels) for _, labels in loader)


def timed(name: str, read, counter: OpenCounter, repeats: int) -> dict:
    read()  # warm the page cache and the code paths
    best, opened, count = float("inf"), 0, 0
    for _ in range(repeats):
        counter.count, counter.active = 0, True
        start = time.perf_counter()
        count = read()
        elapsed = time.perf_counter() - start
        counter.active = False
        opened = counter.count
        best = min(best, elapsed)
    return {"layout": name, "samples": count, "seconds": best, "rate": count / best, "files_opened": opened}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--codebook", type=int, default=16384)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--shard-chunks", type=int, default=10, help="chunks per shard (10 x 1000 = 10k samples)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-sample-tar", action="store_true", help="also time one tar member per sample")
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    counter = OpenCounter()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        codes, labels, keys = make_data(args.samples, args.grid, args.codebook)
        (root / "ours").mkdir()
        (root / "pickles").mkdir()
        manifest = write_ours(root / "ours", codes, labels, keys, args.chunk_size, args.shard_chunks, args.codebook)
        paths = write_pickles(root / "pickles", codes, labels)
        results = [timed("code shards (ours)", lambda: read_ours(root / "ours", manifest, args.batch_size), counter,
                         args.repeats),
                   timed("one pickle per sample", lambda: read_pickles(paths, args.batch_size), counter,
                         args.repeats)]
        if args.per_sample_tar:
            (root / "tars").mkdir()
            urls = write_per_sample_tars(root / "tars", codes, labels, keys, args.chunk_size * args.shard_chunks)
            results.append(timed("webdataset, one member per sample",
                                 lambda: read_per_sample_tars(urls, args.batch_size), counter, args.repeats))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"{args.samples} samples of {args.grid}x{args.grid} codes, batch {args.batch_size}, "
          f"{len(manifest.shards)} shards of {args.shard_chunks} x {args.chunk_size}; torch threads 1, "
          f"cores allowed {affinity}; {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"| layout | samples/s | files opened per pass | seconds per pass |")
    print(f"| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['layout']} | {r['rate']:,.0f} | {r['files_opened']:,} | {r['seconds']:.2f} |")
    ratio = results[0]["rate"] / results[1]["rate"]
    print(f"ours / pickle: {ratio:.1f}x")


if __name__ == "__main__":
    main()
