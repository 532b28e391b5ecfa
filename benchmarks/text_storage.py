"""Precomputed text embeddings against online encoding: the bytes a code shard grows per caption with embeddings
(halton.data.format.chunks format, chunks of 1,000), and the time to encode captions on this machine with the packaged
MiniLM (batch 64 x 120 tokens) and, with --xl, with a random-weight encoder of Flan-T5-XL's shape (the same FLOPs as
the real one; batch 4 x 120, fp32).

    python benchmarks/text_storage.py [--xl]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from halton.data.format.chunks import Chunk, bf16_bits, strings, write_shard
from halton.text import TextEncoder


def shard_bytes(n: int, length: int, width: int, with_text: bool, folder: str) -> int:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16384, (n, 32, 32), dtype=np.uint16)
    emb = mask = None
    if with_text:
        emb = bf16_bits(torch.randn(n, length, width))
        mask = np.arange(length)[None] < rng.integers(1, length + 1, n)[:, None]
    chunk = Chunk(codes, np.zeros(n, np.int32), strings(f"k{i}" for i in range(n)), None,
                  strings(f"caption {i}" for i in range(n)), emb, mask)
    return write_shard(Path(folder) / f"shard{with_text}.tar", [chunk]).bytes


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xl", action="store_true", help="also time an encoder of Flan-T5-XL's shape (~5 GB RAM)")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    n = 1000
    for length, width, what in ((120, 2048, "Flan-T5-XL, 120 x 2048"), (16, 384, "digits MiniLM, 16 x 384")):
        with tempfile.TemporaryDirectory() as folder:
            plain, text = shard_bytes(n, length, width, False, folder), shard_bytes(n, length, width, True, folder)
        per = (text - plain) / n
        print(f"{what}: {per:,.0f} bytes per caption, {per * 1e6 / 1e9:,.1f} GB per million images "
              f"(codes and caption alone: {plain / n:,.0f} bytes per image)")
    prompts = [f"a photograph of a {i} on a sunny afternoon in the park near the old town hall" for i in range(64)]
    minilm = TextEncoder("minilm", max_length=120)
    seconds = median_seconds(lambda: minilm.encode(prompts), 5)
    print(f"MiniLM: {seconds / 64 * 1e3:.1f} ms per caption (batch 64 x 120 tokens, median of 5)")
    if args.xl:
        from transformers import T5Config, T5EncoderModel

        config = T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                          feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        model = T5EncoderModel(config).eval().requires_grad_(False)
        ids, mask = torch.randint(0, 32128, (4, 120)), torch.ones(4, 120, dtype=torch.long)
        with torch.no_grad():
            seconds = median_seconds(lambda: model(input_ids=ids, attention_mask=mask), 3)
        print(f"Flan-T5-XL-shaped encoder ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B): "
              f"{seconds / 4:.2f} s per caption (batch 4 x 120 tokens, fp32, median of 3)")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
