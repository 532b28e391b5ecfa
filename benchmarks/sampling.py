"""Time the samplers against the cost of the model alone.

    python benchmarks/sampling.py --size tiny --grid 16 --codebook 16384 --batch 16 --steps 32 --cfg 2

The floor is steps x one forward of the whole CFG batch with the output head on every position: what a sampler
that only ran the model would cost. A ratio below 1 means the sampler does less than that (the head only where
the step needs logits); above 1 is the sampler's own overhead.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from halton.models import MaskTransformer, build_transformer
from halton.sampling import build_scheduler, sample


def build(args) -> MaskTransformer:
    if args.size == "digits":  # the demo's model (conf/model/digits.yaml)
        return MaskTransformer(17, 8, 128, 2, 4, 384, num_classes=10)
    return build_transformer(args.size, args.codebook, args.grid, args.classes)


def best_of(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="tiny, small, base, large, xl, or digits")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--codebook", type=int, default=16384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--schedulers", default="halton,confidence,random")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per sampler (the best is kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(args).to(device).eval()
    dtype = torch.bfloat16 if args.bf16 else None
    n_cfg = 2 * args.batch if args.cfg else args.batch
    codes = torch.randint(0, model.codebook_size, (n_cfg, *model.grid), device=device)
    labels = torch.randint(0, model.num_classes, (n_cfg,), device=device)
    drop = torch.arange(n_cfg, device=device) >= args.batch

    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(codes, labels, drop)
        if device.type == "cuda":
            torch.cuda.synchronize()

    floor = args.steps * best_of(forward, max(args.repeats, 3))  # also warms up the kernels for the samplers
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}")
    print(f"model {args.size} ({params:.1f}M), grid {model.grid}, codebook {model.codebook_size}, batch "
          f"{args.batch}, {args.steps} steps, cfg {args.cfg}; floor (steps x full forward) {floor:.3f} s")
    sample_labels = labels[: args.batch]
    for name in args.schedulers.split(","):
        scheduler = build_scheduler(name)

        def run():
            sample(model, scheduler, sample_labels, steps=args.steps, cfg_weight=args.cfg, seed=0,
                   autocast_dtype=dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()

        wall = best_of(run, args.repeats, warm_up=False)
        print(f"{name:>10}: {wall:.3f} s  {args.batch / wall:8.1f} images/s  {wall / floor:.2f}x floor")


if __name__ == "__main__":
    main()
