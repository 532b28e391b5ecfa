"""Training-step throughput and model-FLOPs utilisation (MFU), in Lightning and in a bare PyTorch loop, with the
speed levers on and off side by side in one process.

    python benchmarks/train_step.py --preset xl --batch 32 --compile                      # on a GPU
    python benchmarks/train_step.py --preset xl --batch 32 --compile --loops bare \\
        --variants base,eager_loss,fp8,batch64 --profile 5 --json out.json
    python benchmarks/train_step.py --preset digits --batch 96 --steps 10 --device cpu    # anywhere

One step = forward, loss, backward, gradient clipping, fused AdamW (on a GPU), the LR schedule and an EMA update
of the weights: ``MaskGITModule.loss`` on random codes (and random text embeddings for ``t2i``), the same in both
loops. Lightning runs it through ``Trainer.fit`` (``precision=bf16-mixed``, the EMA callback of the training
config, ``halton.training.EMA``, no logger, no checkpoints); the bare loop is the same code in plain PyTorch
(``torch.autocast`` to bf16 with fp32 master weights, the EMA as one ``torch._foreach_lerp_``). Timed steps follow
warm-up steps (which also absorb ``--compile``'s compilation), with the device synchronised before each clock
reading.

Variants (``--variants``, bare loop; ``base`` is what training runs): ``eager_loss`` (compiled blocks, the loss
head uncompiled: the fp32 logits materialised), ``fp8`` (torchao Float8Linear in the blocks), ``cudagraphs``
(blocks compiled with ``mode="reduce-overhead"``),
``autotune`` (``mode="max-autotune-no-cudagraphs"``: minutes of compilation), ``batch64`` (twice the batch),
``flash`` / ``cudnn`` / ``efficient`` (that SDPA kernel only), ``compiled_update`` (clipping, AdamW and the EMA
as one compiled function over the parameters: :class:`CompiledUpdate`), ``batch64_update`` (both), ``whole_graph``
(the whole loss, trunk and head, as one compiled graph instead of block by block), ``coordinate_descent``
(inductor's coordinate-descent tuning of the Triton kernels' launch parameters).

FLOPs and MFU: :mod:`halton.training.throughput` (model FLOPs count the head on the scored tokens only; the
peak is the dense bf16 matmul rate measured on the device, ``--peak-tflops`` to give one). ``--profile N``
profiles N steps of the first bare variant and of the Lightning loop after their timing and reduces each to a
table (top kernels; shares of matmul, attention, elementwise, optimizer and idle time; host synchronisations per
step), written beside ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from halton.conditions import ClassKind, TextKind
from halton.models import MaskTransformer, build_transformer, compile_blocks
from halton.models.text_transformer import PAPER_T2I, TextMaskTransformer
from halton.training import MaskGITModule
from halton.training.module import masked_token_loss
from halton.training.throughput import example_batch, measured_peak_tflops, training_flops_per_image

PRESETS = ("digits", "tiny", "small", "base", "large", "xl", "xl16", "t2i")
VARIANTS = ("base", "eager_loss", "fp8", "cudagraphs", "autotune", "batch64", "flash", "cudnn", "efficient",
            "compiled_update", "batch64_update", "whole_graph", "coordinate_descent")
COMPILE_MODES = {"cudagraphs": "reduce-overhead", "autotune": "max-autotune-no-cudagraphs"}


def build(preset: str) -> tuple[torch.nn.Module, ClassKind | TextKind]:
    """The model of a preset: the demo's (conf/model/digits.yaml), the class model of a size on the paper's 32x32
    tokens with 2x2 patches (``xl`` is conf/model/c2i_xl.yaml), ``xl16``: the xl blocks on 16x16 tokens without
    patches (the same sequence, and the configuration the reference trainer can run: its patchify fails), or the
    paper's text model (conf/model/t2i_l.yaml)."""
    if preset == "xl16":
        return build_transformer("xl", 16384, 16, 1000, registers=1, patch_size=1), ClassKind()
    if preset == "digits":
        return MaskTransformer(17, 8, 128, 2, 4, 384, num_classes=10), ClassKind()
    if preset == "t2i":
        return TextMaskTransformer(**PAPER_T2I), TextKind(max_length=120)
    return build_transformer(preset, 16384, 32, 1000, registers=1, patch_size=2), ClassKind()


def make_module(args, device, variant: str = "base") -> MaskGITModule:
    """The module of ``--preset`` for a variant, built directly on ``device`` (no host-side initialisation)."""
    torch.manual_seed(0)
    with torch.device(device):
        net, condition = build(args.preset)
    compiled = args.compile and variant not in COMPILE_MODES and variant != "whole_graph"
    module = MaskGITModule(net, lr=1e-4, warmup_steps=10, total_steps=10_000, condition=condition,
                           compile=compiled, fp8=variant == "fp8")
    if args.compile and variant == "whole_graph":
        module.loss = torch.compile(module.loss, dynamic=False)
    if variant == "eager_loss":
        module.token_loss = masked_token_loss
    if args.compile and variant in COMPILE_MODES:
        compile_blocks(module.model, mode=COMPILE_MODES[variant])
        module.token_loss = torch.compile(module.token_loss, dynamic=False)
    return module.to(device)


def variant_context(variant: str):
    """The SDPA kernel or inductor setting a variant runs under (nothing for the others)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    if variant == "coordinate_descent":
        import torch._inductor.config as inductor

        return inductor.patch(coordinate_descent_tuning=True)
    return sdpa_kernel(backends[variant]) if variant in backends else contextlib.nullcontext()


class CompiledUpdate:
    """Gradient-norm clipping, AdamW (torch's update rule, decoupled weight decay) and the EMA lerp as one compiled
    function over all parameters: the eager step reads the gradients three times (norm, scale, AdamW) and the
    weights twice (AdamW, EMA) in separate kernels; compiled, the clip coefficient folds into the AdamW pass and
    the EMA reads the weights that pass just wrote. The learning rate and step count are device tensors, so the
    schedule never recompiles it and nothing synchronises with the host."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, max_norm: float = 1.0, decay: float = 0.999, compile: bool = True):
        self.params = params
        self.moments = [torch.zeros_like(p) for p in params]
        self.squares = [torch.zeros_like(p) for p in params]
        self.averages = [p.detach().clone() for p in params]
        device = params[0].device
        self.step_count = torch.zeros((), device=device)
        self.lr = torch.tensor(lr, device=device)
        self.settings = (*betas, eps, weight_decay, max_norm, decay)
        self._update = torch.compile(self._math, dynamic=False) if compile else self._math

    @staticmethod
    def _math(params, grads, moments, squares, averages, step_count, lr, beta1, beta2, eps, weight_decay,
              max_norm, decay):
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        grads = torch._foreach_mul(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
        step_count.add_(1)
        torch._foreach_lerp_(moments, grads, 1 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, 1 - beta2)
        torch._foreach_mul_(params, 1 - lr * weight_decay)
        bias2 = torch.sqrt(1 - beta2 ** step_count)
        denominators = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(squares), bias2), eps)
        steps = torch._foreach_div(moments, denominators)
        torch._foreach_mul_(steps, lr / (1 - beta1 ** step_count))
        torch._foreach_sub_(params, steps)
        torch._foreach_lerp_(averages, params, 1 - decay)

    @torch.no_grad()
    def __call__(self, lr: float) -> None:
        self.lr.fill_(lr)
        grads = [p.grad for p in self.params]
        self._update([p.detach() for p in self.params], grads, self.moments, self.squares, self.averages,
                     self.step_count, self.lr, *self.settings)
        for p in self.params:
            p.grad = None


class Timer:
    """Host clock readings with the device synchronised, at the start of step ``warmup`` and after the last; and a
    mark at every timed step's start (a CUDA event, no synchronisation), whose median interval sets a one-off
    pause inside the timed steps apart from a cost every step pays."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.end, self.marks = device, None, None, []

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def mark(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def median_ms(self) -> float:
        """The median step, from the marks (read after ``now`` synchronised)."""
        pairs = zip(self.marks, self.marks[1:])
        if self.device.type == "cuda":
            return statistics.median(a.elapsed_time(b) for a, b in pairs)
        return statistics.median(1000 * (b - a) for a, b in pairs)


def bare_loop(args, device, batches, variant: str = "base", profile_steps: int = 0):
    """Seconds for the timed steps, and the profiler of ``profile_steps`` further steps (or None)."""
    module = make_module(args, device, variant)
    optimizer = module.configure_optimizers()
    schedule_lr = optimizer["lr_scheduler"]["scheduler"]
    optimizer = optimizer["optimizer"]
    weights = [p.detach() for p in module.model.parameters()]
    ema = ([w.clone() for w in weights], weights)  # (average, current)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    timer = Timer(device)
    fused = None
    if variant in ("compiled_update", "batch64_update"):
        group = optimizer.param_groups[0]
        fused = CompiledUpdate(list(module.model.parameters()), group["lr"], group["betas"], group["eps"],
                               group["weight_decay"], compile=args.compile)

    def step(batch):
        with autocast:
            loss, _ = module.loss(batch)
        loss.backward()
        if fused is not None:  # the schedule still drives the rate: read from the (unused) optimizer's group
            fused(optimizer.param_groups[0]["lr"])
            schedule_lr.step()
            return
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule_lr.step()
        torch._foreach_lerp_(*ema, 1 - 0.999)

    with variant_context(variant):
        for i, batch in enumerate(batches):
            if i == args.warmup:
                timer.start = timer.now()
            if i >= args.warmup:
                timer.mark()
            step(batch)
        timer.mark()
        seconds = timer.now() - timer.start
        prof = None
        if profile_steps:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                start = timer.now()
                for i in range(profile_steps):
                    step(batches[i % len(batches)])
                prof.wall_seconds = timer.now() - start
    return seconds, timer.median_ms(), prof


def lightning_loop(args, device, batches, profile_steps: int = 0):
    """Seconds for the timed steps through ``Trainer.fit``, and the profiler of ``profile_steps`` further steps."""
    import lightning.pytorch as pl
    from torch.profiler import ProfilerActivity, profile

    from halton.training import EMA

    module = make_module(args, device)
    timer = Timer(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities) if profile_steps else None

    class Timing(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                timer.start = timer.now()
            if args.warmup <= batch_idx <= len(batches):
                timer.mark()
            if batch_idx == len(batches):  # the timed steps are over: profile the next ones
                timer.end = timer.now()
                prof.__enter__()
                prof.start_seconds = timer.now()

        def on_train_end(self, trainer, pl_module):
            if prof is None:
                timer.mark()
                timer.end = timer.now()
            else:
                prof.wall_seconds = timer.now() - prof.start_seconds
                prof.__exit__(None, None, None)

    trainer = pl.Trainer(accelerator=device.type, devices=1, max_steps=len(batches) + profile_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         precision="bf16-mixed" if args.precision == "bf16" else "32-true", gradient_clip_val=1.0,
                         callbacks=[EMA(decay=0.999), Timing()], num_sanity_val_steps=0)
    more = [batches[i % len(batches)] for i in range(profile_steps)]  # one epoch: batch_idx never restarts
    loader = torch.utils.data.DataLoader(batches + more, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.end - timer.start, timer.median_ms(), prof


# Kernel families of a training step, by kernel name (first match wins).
KERNEL_KINDS = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn", re.I)),
    ("optimizer, clip, EMA", re.compile(r"multi_tensor|adam|foreach|lerp", re.I)),
    ("matmul", re.compile(r"gemm|xmma|cutlass|nvjet|wgmma|cublas|_mm|matmul|scaled_mm|f8f8|sm90|sm80"
                          r"|aten::(mm|addmm|bmm)\b", re.I)),
)


# Host-side calls that wait for the device (a step with none of them never leaves the GPU idle waiting for Python).
SYNCS = re.compile(r"cudaStreamSynchronize|cudaDeviceSynchronize|cudaEventSynchronize|aten::_local_scalar_dense")


def kernel_kind(name: str) -> str:
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "elementwise, norms, loss")


def profile_table(prof, steps: int) -> dict:
    """The kernels of the profiled steps: the top 15 by device time and the share of each family, idle included
    (the wall time of the steps minus the time some kernel ran; one stream)."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    # Not the annotations (``Optimizer.step#AdamW.step``, ``ProfilerStep#3``): their device-side range spans the
    # kernels they launch (in Lightning the optimizer step wraps forward and backward), which would count them twice.
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
               and "#" not in e.key]
    time_of = (lambda e: e.self_device_time_total) if kernels else (lambda e: e.self_cpu_time_total)
    if not kernels:  # a CPU run (the dry run): the operators' own time
        kernels = [e for e in events if e.self_cpu_time_total > 0 and not e.key.startswith("ProfilerStep")]
    total_us = sum(time_of(e) for e in kernels)
    wall_us = prof.wall_seconds * 1e6
    shares: dict[str, float] = {}
    for event in kernels:
        kind = kernel_kind(event.key)
        shares[kind] = shares.get(kind, 0.0) + time_of(event)
    shares["idle (no kernel running)"] = max(wall_us - total_us, 0.0)
    top = sorted(kernels, key=lambda e: -time_of(e))[:15]
    syncs = {e.key: e.count / steps for e in events if SYNCS.fullmatch(e.key)}
    return {"host_syncs_per_step": syncs,
        "steps": steps, "wall_ms_per_step": wall_us / steps / 1e3, "kernel_ms_per_step": total_us / steps / 1e3,
        "shares": {k: {"ms_per_step": v / steps / 1e3, "share": v / max(wall_us, total_us)}
                   for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top": [{"kernel": e.key[:90], "kind": kernel_kind(e.key), "calls_per_step": e.count / steps,
                 "ms_per_step": time_of(e) / steps / 1e3, "share": time_of(e) / total_us}
                for e in top],
    }


def profile_markdown(table: dict) -> str:
    lines = [f"{table['steps']} steps: {table['wall_ms_per_step']:.1f} ms/step wall, "
             f"{table['kernel_ms_per_step']:.1f} ms/step in kernels; host synchronisations per step: "
             f"{', '.join(f'{k} {v:g}' for k, v in table['host_syncs_per_step'].items()) or 'none'}", "",
             "| family | ms / step | share |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['ms_per_step']:.2f} | {100 * v['share']:.1f}% |" for k, v in table["shares"].items()]
    lines += ["", "| kernel | family | calls / step | ms / step | share of kernel time |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| `{t['kernel']}` | {t['kind']} | {t['calls_per_step']:.0f} | {t['ms_per_step']:.2f} | "
              f"{100 * t['share']:.1f}% |" for t in table["top"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--loops", default="bare,lightning", help="bare, lightning, or both")
    parser.add_argument("--variants", default="base",
                        help=f"bare-loop variants, comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks and the loss (model.compile)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steps of the first bare variant and of Lightning")
    parser.add_argument("--json", default=None, help="write the results (and the profile) to this JSON file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense matrix rate for MFU (default: measured on CUDA, none on CPU)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = measured_peak_tflops(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    with torch.device("meta"):
        shapes, condition = build(args.preset)
    model_flops, executed = training_flops_per_image(MaskGITModule(shapes, condition=condition))
    params = sum(p.numel() for p in shapes.parameters())
    generator = torch.Generator().manual_seed(0)

    def batches_of(size):
        return [example_batch(shapes, size, device, generator) for _ in range(args.warmup + args.steps)]

    batches = {args.batch: batches_of(args.batch)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device {name}, torch {torch.__version__}; preset {args.preset} ({params / 1e6:.1f}M parameters), batch "
          f"{args.batch}, {args.precision}, compile {args.compile}; {model_flops / 1e9:.1f} GFLOP per image "
          f"(model; {executed / 1e9:.1f} executed with the head on every position); peak "
          f"{'%.0f TFLOP/s (measured)' % peak if peak and args.peak_tflops is None else peak}")
    results = {"device": name, "torch": torch.__version__, "preset": args.preset, "batch": args.batch,
               "params_m": params / 1e6, "gflop_per_image": model_flops / 1e9, "peak_tflops": peak, "rows": {}}
    runs = [("bare", v) for v in variants] if "bare" in args.loops.split(",") else []
    if "lightning" in args.loops.split(","):
        runs.insert(1 if runs else 0, ("lightning", "base"))
    for index, (loop, variant) in enumerate(runs):
        label = loop if variant == "base" else f"{loop}[{variant}]"
        size = 2 * args.batch if variant in ("batch64", "batch64_update") else args.batch
        if size not in batches:
            batches[size] = batches_of(size)
        torch._dynamo.reset()  # each variant compiles for its own shapes, never a dynamic-shape fallback
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if loop == "lightning":
                seconds, median_ms, prof = lightning_loop(args, device, batches[size], args.profile)
            else:
                seconds, median_ms, prof = bare_loop(args, device, batches[size], variant,
                                                     args.profile if index == 0 else 0)
        except Exception as error:  # one lever failing must not lose the others' numbers
            print(f"{label:>9}: failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
            results["rows"][label] = {"error": f"{type(error).__name__}: {error}"[:500]}
            continue
        images_per_s = size * args.steps / seconds
        mfu = model_flops * images_per_s / (peak * 1e12) if peak else math.nan
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
        results["rows"][label] = {"ms_per_step": 1000 * seconds / args.steps, "median_ms_per_step": median_ms,
                                  "images_per_s": images_per_s, "mfu": mfu, "peak_memory_gib": memory, "batch": size}
        print(f"{label:>9}: {1000 * seconds / args.steps:8.1f} ms/step (median {median_ms:.1f})  "
              f"{images_per_s:8.1f} images/s  "
              f"MFU {100 * mfu:5.1f}%  peak memory {memory:.1f} GiB")
        if prof is not None:
            key = "profile" if loop == "bare" else f"profile_{loop}"
            results[key] = profile_table(prof, args.profile)
            print(f"profile of {label}: " + profile_markdown(results[key]))
        rows = results["rows"]
        if loop == "lightning" and "images_per_s" in rows.get("bare", {}):
            results["lightning_over_bare"] = rows["lightning"]["ms_per_step"] / rows["bare"]["ms_per_step"]
            print(f"Lightning / bare: {results['lightning_over_bare']:.3f}x")
        write_json(args, results)  # after every run: a run cut short keeps what it measured


def write_json(args, results: dict) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        profiles = [f"## {key}\n\n{profile_markdown(results[key])}\n" for key in results if key.startswith("profile")]
        if profiles:
            Path(args.json).with_suffix(".profile.md").write_text("\n".join(profiles))


if __name__ == "__main__":
    main()
