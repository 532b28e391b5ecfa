"""Training-step throughput and model-FLOPs utilisation (MFU), in Lightning and in a bare PyTorch loop.

    python benchmarks/train_step.py --preset xl --batch 32 --precision bf16            # on a GPU
    python benchmarks/train_step.py --preset digits --batch 96 --steps 10 --device cpu  # anywhere

One step = forward, loss, backward, gradient clipping, fused AdamW (on a GPU), the LR schedule and an EMA update
of the weights: ``MaskGITModule.loss`` on random codes (and random text embeddings for ``t2i``), the same in both
loops. Lightning runs it through ``Trainer.fit`` (``precision=bf16-mixed``, the EMA callback of the training
config, ``halton.training.EMA``, no logger, no checkpoints); the bare loop is the same code in plain PyTorch
(``torch.autocast`` to bf16 with fp32 master weights, the EMA as one ``torch._foreach_lerp_``). Timed steps follow
warm-up steps (which also absorb ``--compile``'s compilation), with the device synchronised before each clock reading.

FLOPs per image (``torch.utils.flop_counter.FlopCounterMode`` on one forward and backward at batch 1, i.e. every
matmul and attention call with their real shapes: the blocks' linear layers on every token of the sequence, the
per-image AdaLN projections, self-attention over the sequence and, for ``t2i``, cross-attention over the 120 text
tokens), counting the output head only on the scored (masked) tokens: the step runs the head on every position
to keep shapes static, but the unscored ones are not useful work, so they are left out of MFU (the expected
masked share of the arccos schedule, E[arccos(u) / (pi/2)] = 2/pi). MFU = FLOPs per image x images/s / peak, the
peak being the device's dense bf16 matrix rate (``--peak-tflops``; 989 for an H100 SXM by its datasheet, about
800 measured here on an 8192^3 bf16 matmul, which is the default on a GPU: MFU against what the chip delivers).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import time

import torch

from halton.conditions import ClassKind, TextKind
from halton.models import MaskTransformer, build_transformer
from halton.models.text_transformer import PAPER_T2I, TextMaskTransformer
from halton.training import MaskGITModule

PRESETS = ("digits", "tiny", "small", "base", "large", "xl", "t2i")
TEXT_LENGTH = 120  # the paper's T5 length


def build(preset: str) -> tuple[torch.nn.Module, ClassKind | TextKind]:
    """The model of a preset: the demo's (conf/model/digits.yaml), the class model of a size on the paper's 32x32
    tokens with 2x2 patches (``xl`` is conf/model/c2i_xl.yaml), or the paper's text model (conf/model/t2i_l.yaml)."""
    if preset == "digits":
        return MaskTransformer(17, 8, 128, 2, 4, 384, num_classes=10), ClassKind()
    if preset == "t2i":
        return TextMaskTransformer(**PAPER_T2I), TextKind(max_length=TEXT_LENGTH)
    return build_transformer(preset, 16384, 32, 1000, registers=1, patch_size=2), ClassKind()


def random_batch(model, batch: int, device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    codes = torch.randint(0, model.codebook_size, (batch, *model.grid), generator=generator)
    out = {"codes": codes}
    if isinstance(model, TextMaskTransformer):
        out["text_emb"] = torch.randn(batch, TEXT_LENGTH, model.text_dim, generator=generator).bfloat16()
        lengths = torch.randint(8, TEXT_LENGTH + 1, (batch, 1), generator=generator)
        out["text_mask"] = torch.arange(TEXT_LENGTH) < lengths
    else:
        out["labels"] = torch.randint(0, model.num_classes, (batch,), generator=generator)
    return {k: v.to(device) for k, v in out.items()}


def flops_per_image(module: MaskGITModule) -> tuple[float, float]:
    """(model FLOPs of one training image with the head on the scored tokens only, FLOPs actually executed)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = module.model
    device = next(model.parameters()).device
    batch = random_batch(model, 1, device, torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = module.loss(batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    executed = float(counter.get_total_flops())
    # the head: hidden width -> codebook + 1 at every code position (the text model ties it to the token embedding)
    width = model.head.in_features if hasattr(model, "head") else model.tok_emb.embedding_dim
    head = 3 * 2 * model.num_tokens * width * (model.codebook_size + 1)  # forward + backward
    return executed - head * (1 - 2 / math.pi), executed


def make_module(args, device) -> MaskGITModule:
    torch.manual_seed(0)
    net, condition = build(args.preset)
    module = MaskGITModule(net, lr=1e-4, warmup_steps=10, total_steps=10_000, condition=condition,
                           compile=args.compile)
    return module.to(device)


class Timer:
    """Host clock readings with the device synchronised, at the start of step ``warmup`` and after the last."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.end = device, None, None

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()


def bare_loop(args, device, batches) -> float:
    module = make_module(args, device)
    optimizer = module.configure_optimizers()
    schedule_lr = optimizer["lr_scheduler"]["scheduler"]
    optimizer = optimizer["optimizer"]
    weights = [p.detach() for p in module.model.parameters()]
    ema = ([w.clone() for w in weights], weights)  # (average, current)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    timer = Timer(device)
    profiler = contextlib.nullcontext()
    if args.profile:  # the last three steps: the kernels that take the time, printed after the timing
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=activities, schedule=schedule(wait=len(batches) - 3, warmup=0, active=3))
    with profiler as prof:
        seconds = _bare_steps(args, batches, module, optimizer, schedule_lr, ema, autocast, timer, prof)
    if args.profile:
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))
    return seconds


def _bare_steps(args, batches, module, optimizer, schedule, ema, autocast, timer, prof) -> float:
    for step, batch in enumerate(batches):
        if step == args.warmup:
            timer.start = timer.now()
        with autocast:
            loss, _ = module.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        torch._foreach_lerp_(*ema, 1 - 0.999)
        if prof is not None:
            prof.step()
    return timer.now() - timer.start


def lightning_loop(args, device, batches) -> float:
    import lightning.pytorch as pl

    from halton.training import EMA

    module = make_module(args, device)
    timer = Timer(device)

    class Timing(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                timer.start = timer.now()

        def on_train_end(self, trainer, pl_module):
            timer.end = timer.now()

    trainer = pl.Trainer(accelerator=device.type, devices=1, max_steps=len(batches), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         precision="bf16-mixed" if args.precision == "bf16" else "32-true", gradient_clip_val=1.0,
                         callbacks=[EMA(decay=0.999), Timing()], num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.end - timer.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--loops", default="bare,lightning", help="bare, lightning, or both")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer (model.compile)")
    parser.add_argument("--profile", action="store_true", help="bare loop: print the top kernels of the last steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense matrix rate for MFU (default: 800 on CUDA, none on CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = args.peak_tflops if args.peak_tflops is not None else (800.0 if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    generator = torch.Generator().manual_seed(0)
    probe = make_module(argparse.Namespace(**{**vars(args), "compile": False}), device)
    model_flops, executed = flops_per_image(probe)
    params = sum(p.numel() for p in probe.model.parameters())
    del probe
    batches = [random_batch(_shape_model(args.preset), args.batch, device, generator)
               for _ in range(args.warmup + args.steps)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device {name}, torch {torch.__version__}; preset {args.preset} ({params / 1e6:.1f}M parameters), batch "
          f"{args.batch}, {args.precision}, compile {args.compile}; {model_flops / 1e9:.1f} GFLOP per image "
          f"(model; {executed / 1e9:.1f} executed with the head on every position)")
    rows = {}
    for loop in args.loops.split(","):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        seconds = {"bare": bare_loop, "lightning": lightning_loop}[loop](args, device, batches)
        images_per_s = args.batch * args.steps / seconds
        mfu = model_flops * images_per_s / (peak * 1e12) if peak else math.nan
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
        rows[loop] = seconds
        print(f"{loop:>9}: {1000 * seconds / args.steps:8.1f} ms/step  {images_per_s:8.1f} images/s  "
              f"MFU {100 * mfu:5.1f}%  peak memory {memory:.1f} GiB")
    if len(rows) == 2:
        print(f"Lightning / bare: {rows['lightning'] / rows['bare']:.3f}x")


_SHAPES: dict[str, torch.nn.Module] = {}


def _shape_model(preset: str) -> torch.nn.Module:
    """A model of the preset on the meta device: its shapes for the random batches, at no memory."""
    if preset not in _SHAPES:
        with torch.device("meta"):
            _SHAPES[preset] = build(preset)[0]
    return _SHAPES[preset]


if __name__ == "__main__":
    main()
