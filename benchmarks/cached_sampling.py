"""Uncached against cached sampling (``sample(..., cache_refresh=k)``, ReCAP-style context caching), side by side in
one run: wall time, images/s, the speed-up over uncached and the trunk cost in position-layers per image.

    python benchmarks/cached_sampling.py                      # tiny and large, 16x16 tokens, codebook 16384,
                                                              # 32 steps, CFG 2, refresh 2, 4, 8, Halton
    python benchmarks/cached_sampling.py --sizes tiny --schedulers halton confidence --batch 8

The models have random weights (the cost does not depend on them); the AdaLN modulation is drawn too, so that every
block does its work as a trained one would. A short untimed run warms up the full and local trunk calls, then every
setting runs ``--repeats`` times round robin (a change in the machine's load touches them all), the best kept; on
CUDA the device is synchronised before the clock is read. On a CPU shared with other work the wall time depends on
the load; the process's CPU time (with ``--threads 1``: no thread waits counted) shows the work itself. The table says what a cached run saves in time; what it
costs in quality is measured on a trained model (evaluate.py cache_refresh=...).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import subprocess
import time

import torch

from halton.models import build_transformer
from halton.models.transformer import SIZES
from halton.sampling import build_scheduler, sample


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def build(size: str, grid: int, codebook: int, classes: int, device: torch.device):
    torch.manual_seed(0)
    model = build_transformer(size, codebook, grid, classes)
    for block in model.transformer.layers:  # AdaLN-zero starts every block as the identity: draw its modulation
        torch.nn.init.normal_(block.mlp[1].weight, std=0.02)
    return model.to(device).eval()


def run_once(model, scheduler, labels, args, cache_refresh, device, steps=None) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds, and the result of one sampling run."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = sample(model, scheduler, labels, steps=steps or args.steps, cfg_weight=args.cfg, seed=0,
                    cache_refresh=cache_refresh, autocast_dtype=torch.bfloat16 if args.bf16 else None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "large"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 1],
                        help="images per run, one per size (the last repeats)")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--codebook", type=int, default=16384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--refresh", type=int, nargs="+", default=[2, 4, 8], help="cache_refresh values to time")
    parser.add_argument("--schedulers", nargs="+", default=["halton"], choices=["halton", "random", "confidence"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.grid}x{args.grid} tokens, "
          f"codebook {args.codebook}, {args.steps} steps, CFG {args.cfg:g}{', bf16' if args.bf16 else ''}\n")
    print("| model | batch | scheduler | cache_refresh | seconds | images/s | speed-up | CPU seconds | speed-up (CPU) "
          "| position-layers/image | full steps |")
    print("|" + " --- |" * 11)
    for i, size in enumerate(args.sizes):
        batch = args.batch[min(i, len(args.batch) - 1)]
        model = build(size, args.grid, args.codebook, args.classes, device)
        labels = torch.arange(batch, device=device) % args.classes
        for name in args.schedulers:
            scheduler = build_scheduler(name)
            run_once(model, scheduler, labels, args, 2, device, steps=4)  # warm-up: full and local calls
            settings = [None, *args.refresh]
            best = {k: float("inf") for k in settings}
            best_cpu, results = dict(best), {}
            for _ in range(args.repeats):  # round robin: a change of the machine's load touches every setting
                for refresh in settings:
                    seconds, cpu, results[refresh] = run_once(model, scheduler, labels, args, refresh, device)
                    best[refresh], best_cpu[refresh] = min(best[refresh], seconds), min(best_cpu[refresh], cpu)
            for refresh in settings:
                seconds, cpu, result = best[refresh], best_cpu[refresh], results[refresh]
                print(f"| {size} | {batch} | {name} | {refresh or 'none (exact)'} | {seconds:.2f} | "
                      f"{batch / seconds:.3f} | {best[None] / seconds:.2f}x | {cpu:.2f} | {best_cpu[None] / cpu:.2f}x | "
                      f"{result.position_layers_per_image:,} | {sum(result.full_per_step)}/{args.steps} |", flush=True)
        del model
        with contextlib.suppress(AttributeError):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
