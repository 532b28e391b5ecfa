"""Time the samplers against the cost of the model alone, and optionally against the reference code.

    python benchmarks/sampling.py --size tiny --grid 16 --codebook 16384 --batch 16 --steps 32 --cfg 2

The floor is steps x one forward of the whole CFG batch with the output head on every position: what a sampler
that only ran the model would cost. A ratio below 1 means the sampler does less than that (the head only where
the step needs logits); above 1 is the sampler's own overhead.

Every timed run is preceded by an untimed warm-up run (kernel selection, caches, and with ``--compile`` the
compilation), and on CUDA the device is synchronised before the host clock is read. Options beyond the sizes:

  --bf16          autocast to bfloat16 (``autocast_dtype=torch.bfloat16`` for our sampler; the reference runs its
                  forwards under the same autocast)
  --compile       torch.compile the transformer before timing (ours: its trunk, which is what the sampler calls;
                  the reference: its whole forward); the warm-up runs absorb the compilation
  --repeats N     timed runs per sampler, the best is kept
  --randomize / --no-randomize
                  randomly rolled Halton order per sample (our default; the reference's config default is off),
                  applied to ours and to the reference alike
  --reference PATH
                  a local checkout of the official code (github valeoai/Halton-MaskGIT). Builds its ``Transformer``
                  with random weights of the chosen --size, loads the same weights into ours (through
                  ``from_official_checkpoint``), prints the largest logit difference of one forward, and times its
                  Halton and Confidence samplers against ours on the same batch, steps, CFG weight and temperature 1.
                  Decoding to pixels is excluded on both sides (the reference's VQ decoder is replaced by identity).

On a GPU, ours against the reference:

    python benchmarks/sampling.py --size large --batch 32 --steps 32 --cfg 2 --bf16 --reference PATH
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from halton.models import MaskTransformer, build_transformer
from halton.models.official import from_official_checkpoint
from halton.models.transformer import SIZES
from halton.sampling import build_scheduler, sample


def build(args) -> MaskTransformer:
    if args.size == "digits":  # the demo's model (conf/model/digits.yaml)
        return MaskTransformer(17, 8, 128, 2, 4, 384, num_classes=10)
    return build_transformer(args.size, args.codebook, args.grid, args.classes)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int, warm_up: bool = True) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` (which synchronises the device itself), after one warm-up."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def compile_ours(model: MaskTransformer, mode: str = "default") -> None:
    """The sampler calls ``trunk_conditioned`` and ``logits``, not ``forward`` (so ``model.compile()`` alone would
    compile nothing it runs): compile the trunk, whose shapes are fixed per run; the head sees a different number
    of positions at every step, so it stays eager."""
    model.trunk_conditioned = torch.compile(model.trunk_conditioned, mode=mode)


def build_reference(args, device: torch.device):
    """The reference ``Transformer`` with random weights of ``args.size``, our model holding the same weights, and
    the reference sampler classes. The checkout is on ``sys.path`` only while importing from it."""
    root = str(Path(args.reference).resolve())
    if not (Path(root) / "Network" / "transformer.py").is_file():
        raise SystemExit(f"--reference {args.reference}: no Network/transformer.py there "
                         "(not a Halton-MaskGIT checkout)")
    sys.path.insert(0, root)
    try:
        from Network.transformer import Transformer
        from Sampler.confidence_sampler import ConfidenceSampler
        from Sampler.halton_sampler import HaltonSampler
    finally:
        sys.path.remove(root)
    hidden, depth, heads = SIZES[args.size]
    # As the reference trainer builds it (Trainer/cls_trainer.py): mlp_dim 4 x hidden, one register, no patching.
    vit = Transformer(input_size=args.grid, hidden_dim=hidden, codebook_size=args.codebook, depth=depth, heads=heads,
                      mlp_dim=4 * hidden, dropout=0.0, nclass=args.classes, register=1, proj=1)
    # Its AdaLN-zero init makes every block the identity: give the block modulations random values too, so that
    # the logit check and the sampled distributions go through real blocks.
    for block in vit.transformer.layers:
        torch.nn.init.normal_(block.mlp[1].weight, std=0.02)
        torch.nn.init.normal_(block.mlp[1].bias, std=0.02)
    with tempfile.TemporaryDirectory() as folder:  # the released checkpoints' format
        path = Path(folder) / "reference.pth"
        torch.save({"model_state_dict": vit.state_dict()}, path)
        model = from_official_checkpoint(path, heads)
    return vit.to(device).eval(), model.to(device).eval(), HaltonSampler, ConfidenceSampler


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
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer(s) before timing")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode for both sides: default, reduce-overhead (CUDA graphs), ...")
    parser.add_argument("--randomize", action=argparse.BooleanOptionalAction, default=True,
                        help="randomly rolled Halton order per sample, for ours and the reference (default: on)")
    parser.add_argument("--reference", metavar="PATH",
                        help="checkout of github valeoai/Halton-MaskGIT: time its samplers against ours")
    args = parser.parse_args()
    if args.reference and args.size not in SIZES:
        parser.error(f"--reference needs --size one of {', '.join(SIZES)}")

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.reference:
        vit, model, HaltonSampler, ConfidenceSampler = build_reference(args, device)
    else:
        model = build(args).to(device).eval()
    dtype = torch.bfloat16 if args.bf16 else None
    n_cfg = 2 * args.batch if args.cfg else args.batch
    codes = torch.randint(0, model.codebook_size, (n_cfg, *model.grid), device=device)
    labels = torch.randint(0, model.num_classes, (n_cfg,), device=device)
    drop = torch.arange(n_cfg, device=device) >= args.batch  # True: unconditional (null class), on both sides

    check = None
    if args.reference:  # one float32 forward of each, same weights, same input, before any compilation
        check = (model(codes, labels, drop).float() - vit(codes, labels, drop).float()).abs().max().item()
    if args.compile:
        compile_ours(model, args.compile_mode)
        if args.reference:
            vit.compile(mode=args.compile_mode)

    def forward():
        with autocast(device, dtype):
            model(codes, labels, drop)
        synchronize(device)

    floor = args.steps * best_of(forward, max(args.repeats, 3))  # also warms up the kernels for the samplers
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}")
    print(f"model {args.size} ({params:.1f}M), grid {model.grid}, codebook {model.codebook_size}, batch "
          f"{args.batch}, {args.steps} steps, cfg {args.cfg}, {'bf16' if dtype else 'fp32'}"
          f"{f', compiled ({args.compile_mode})' if args.compile else ''}; floor (steps x full forward) {floor:.3f} s")
    if check is not None:
        print(f"same weights, one forward: max |ours - reference| logit = {check:.3g}")
    sample_labels = labels[: args.batch]

    def time_ours(name: str) -> float:
        scheduler = build_scheduler(name, randomize=args.randomize) if name == "halton" else build_scheduler(name)

        def run():
            sample(model, scheduler, sample_labels, steps=args.steps, cfg_weight=args.cfg, seed=0,
                   autocast_dtype=dtype)
            synchronize(device)

        return best_of(run, args.repeats)

    ours = {}
    for name in args.schedulers.split(","):
        ours[name] = wall = time_ours(name)
        print(f"{name:>10}: {wall:.3f} s  {args.batch / wall:8.1f} images/s  {wall / floor:.2f}x floor")
    if not args.reference:
        return

    # The attributes of the reference trainer (Trainer/cls_trainer.py) its samplers read. Decoding to pixels is
    # excluded on both sides: our sampler returns codes, and the reference's VQ decoder is replaced by identity.
    trainer = types.SimpleNamespace(
        input_size=args.grid, vit=vit, ema=vit, autocast=autocast(device, dtype),
        args=types.SimpleNamespace(device=device, mask_value=args.codebook, codebook_size=args.codebook,
                                   use_ema=False),
        ae=types.SimpleNamespace(decode_code=lambda code: code.float()),
    )
    # Temperature 1, no top-k, no temperature warm-up; the reference Halton sampler takes the arccos schedule
    # (sched_pow is unused by its __call__); its Confidence sampler: Gumbel noise r_temp 4.5 decreasing linearly,
    # CFG weight ramped from 0 to w, as ours by default.
    references = {
        "halton": HaltonSampler(sm_temp_min=1, sm_temp_max=1, temp_pow=1, w=args.cfg, sched_pow=2.5,
                                step=args.steps, randomize=args.randomize, top_k=-1, temp_warmup=0),
        "confidence": ConfidenceSampler(sm_temp=1, w=args.cfg, randomize="linear", r_temp=4.5,
                                        sched_mode="arccos", step=args.steps),
    }
    rows = []
    for name, sampler in references.items():
        if name not in ours:
            ours[name] = time_ours(name)

        def run_reference():
            # The reference Confidence sampler never enters trainer.autocast: run it under the same autocast.
            with autocast(device, dtype) if name == "confidence" else contextlib.nullcontext():
                sampler(trainer, nb_sample=args.batch, labels=sample_labels, verbose=False)
            synchronize(device)

        rows.append((name, ours[name], best_of(run_reference, args.repeats)))
    print(f"\n{'scheduler':>10}  {'ours s':>8}  {'reference s':>11}  {'speed-up':>8}  {'ours img/s':>10}  "
          f"{'ref img/s':>10}")
    for name, mine, theirs in rows:
        print(f"{name:>10}  {mine:8.3f}  {theirs:11.3f}  {theirs / mine:7.2f}x  {args.batch / mine:10.1f}  "
              f"{args.batch / theirs:10.1f}")


if __name__ == "__main__":
    main()
