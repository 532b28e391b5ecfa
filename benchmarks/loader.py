"""Loader throughput on one core: code shards (chunks of ~1000 samples per tar member) against the reference
layout (one pickle file per sample), and webdataset with one tar member per sample; ``--checksums`` also times
the code shards with ``verify_checksums=True`` (each shard's SHA-256 checked against the manifest).

    taskset -c 0 python benchmarks/loader.py --samples 100000 --grid 16 --checksums --repeats 7

One core: torch and numpy are limited to one thread and the loaders run in this process (num_workers=0); with
taskset the process is pinned too. Warm cache: every layout is read once before it is timed. The layouts take
turns, one pass each per round, so that a change in the machine's load falls on all of them alike. Files opened
are counted with a Python audit hook (every open() of a path during the timed pass).
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

from halton.data.format.chunks import Chunk, split_into_chunks, strings, write_shard
from halton.data.format.manifest import Manifest
from halton.data.reading.shard_stream import CodeShardStream


OURS, VERIFIED, PICKLES = "code shards (ours)", "code shards, verify_checksums=true", "one pickle per sample"


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


def read_ours(folder: Path, manifest: Manifest, batch_size: int, verify_checksums: bool = False) -> int:
    stream = CodeShardStream(folder, manifest, batch_size, shuffle=True, drop_last=True, num_workers=0,
                             verify_checksums=verify_checksums)
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


def timed(reads: dict, counter: OpenCounter, repeats: int) -> list[dict]:
    """``reads``: layout name -> function reading one pass and returning its sample count. Best and median pass."""
    for read in reads.values():
        read()  # warm the page cache and the code paths
    passes = {name: [] for name in reads}
    for _ in range(repeats):
        for name, read in reads.items():  # alternating: load changes on a shared machine hit every layout
            counter.count, counter.active = 0, True
            start = time.perf_counter()
            count = read()
            passes[name].append((time.perf_counter() - start, count, counter.count))
            counter.active = False
    results = []
    for name, runs in passes.items():
        seconds, count, opened = min(runs)
        median = float(np.median([r[0] for r in runs]))
        results.append({"layout": name, "samples": count, "seconds": seconds, "rate": count / seconds,
                        "median_rate": count / median, "files_opened": opened})
    return results


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
    parser.add_argument("--checksums", action="store_true",
                        help="also time the code shards with verify_checksums=True")
    parser.add_argument("--only-ours", action="store_true", help="time the code shards only (no pickles)")
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    counter = OpenCounter()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        codes, labels, keys = make_data(args.samples, args.grid, args.codebook)
        (root / "ours").mkdir()
        manifest = write_ours(root / "ours", codes, labels, keys, args.chunk_size, args.shard_chunks, args.codebook)
        reads = {OURS: lambda: read_ours(root / "ours", manifest, args.batch_size)}
        if args.checksums:
            reads[VERIFIED] = lambda: read_ours(root / "ours", manifest, args.batch_size, verify_checksums=True)
        if not args.only_ours:
            (root / "pickles").mkdir()
            paths = write_pickles(root / "pickles", codes, labels)
            reads[PICKLES] = lambda: read_pickles(paths, args.batch_size)
        if args.per_sample_tar:
            (root / "tars").mkdir()
            urls = write_per_sample_tars(root / "tars", codes, labels, keys, args.chunk_size * args.shard_chunks)
            reads["webdataset, one member per sample"] = lambda: read_per_sample_tars(urls, args.batch_size)
        results = timed(reads, counter, args.repeats)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"{args.samples} samples of {args.grid}x{args.grid} codes, batch {args.batch_size}, "
          f"{len(manifest.shards)} shards of {args.shard_chunks} x {args.chunk_size}; torch threads 1, "
          f"cores allowed {affinity}; {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"best and median of {args.repeats} passes per layout, taken in turns")
    print("| layout | samples/s (best) | samples/s (median) | files opened per pass | seconds per pass (best) |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['layout']} | {r['rate']:,.0f} | {r['median_rate']:,.0f} | {r['files_opened']:,} | "
              f"{r['seconds']:.3f} |")
    by_name = {r["layout"]: r for r in results}
    if PICKLES in by_name:
        print(f"ours / pickle: {by_name[OURS]['rate'] / by_name[PICKLES]['rate']:.1f}x")
    if VERIFIED in by_name:
        cost = [1 - by_name[VERIFIED][k] / by_name[OURS][k] for k in ("rate", "median_rate")]
        print(f"verify_checksums=true costs {cost[0]:.1%} of the throughput (best), {cost[1]:.1%} (median)")


if __name__ == "__main__":
    main()
