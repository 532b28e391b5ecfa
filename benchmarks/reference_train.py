"""Training-step time of the official reference trainer (github valeoai/Halton-MaskGIT), to set beside ours.

    python benchmarks/reference_train.py --reference PATH --size xlarge --batch 32 --precision bf16 [--compile]  # GPU
    python benchmarks/reference_train.py --reference PATH --size tiny --grid 8 --batch 4 --steps 2 --warmup 1 \\
        --device cpu --precision fp32                                                                     # anywhere

PATH is a local checkout of the reference (nothing of it is in this repository); it is on ``sys.path`` only while
importing from it. What runs is the reference's own ``MaskGIT.train_one_epoch`` (Trainer/cls_trainer.py), called on
a trainer object built without its ``__init__`` (which loads the VQGAN and the data): its networks come from its
``get_network("vit")`` and ``get_network("ema")`` (the Transformer of ``transformer_size``, ``torch.compile``d with
``--compile``, the EMA a deep copy of it), and the loss, optimizer and autocast are the three lines of its
``__init__``: ``CrossEntropyLoss(ignore_index=-100)``, ``get_optim`` = ``torch.optim.AdamW(lr, betas=(0.9, 0.999),
weight_decay=0.03)`` (default foreach, not fused, one group with decay on every weight), and
``torch.amp.autocast(bfloat16)``. Each step is therefore exactly its loop: ``adapt_learning_rate``, the label drop
and ``get_mask_code`` (drawn on the host and copied to the device), the forward and the loss on every token, the
backward, ``clip_grad_norm_``, AdamW, ``zero_grad``, the EMA update (``Network/ema.py``, tensor by tensor) and its
host reads of the loss and the accuracy. Its settings are main.py's defaults with launch/run_cls_to_img.sh's
values: mask value = codebook size, arccos schedule, label drop 0.1, grad clip 1, no gradient accumulation, lr 1e-4
with 2500 warm-up steps; EMA on (decay 0.999, every step), which the launch script leaves off.

Left out: the data loader (random codes and labels are made on the device beforehand and handed to the loop as
its ``train_data``, so no host-to-device copy of the batch), and, by running it as a non-master process, the tqdm
bar, the TensorBoard scalars and the sampling / checkpoint every 2500 steps (logging and saving, not the step);
no DDP. Their modules (the data loader, FID evaluation) are replaced by empty stand-ins at import, as they need
webdataset and clean-fid. The reference's patchify (``proj`` > 1) fails in its forward (an einops pattern with an
unused axis), so the model runs on the full token grid with ``proj`` 1, as its launch script does: at
``--grid 32`` its sequence is 1024 tokens + 1 register against ours' 256 + 1 with 2x2 patches.

Timed steps follow ``--warmup`` untimed steps (which also absorb the compilation), with the device synchronised
before each clock reading; the peak memory counts everything since the start (weights, AdamW, EMA, activations).
On CUDA one more step follows the timing under ``torch.cuda.set_sync_debug_mode("warn")`` and its host
synchronisations are counted (10 by reading the code: three host-to-device copies of host-drawn randoms, three
boolean-mask indexings, four reads of the loss and the accuracy).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import sys
import time
import types
import warnings
from pathlib import Path

import torch

SIZES = ("tiny", "small", "base", "large", "xlarge")


def import_reference(path: str):
    root = str(Path(path).resolve())
    if not (Path(root) / "Trainer" / "cls_trainer.py").is_file():
        raise SystemExit(f"--reference {path}: no Trainer/cls_trainer.py there (not a Halton-MaskGIT checkout)")
    # The data loader and the FID evaluation are not part of the step, and their imports need packages that are
    # not dependencies here (webdataset, clean-fid): stand-ins for the two names the trainer imports from them.
    stubs = {"Dataset.dataloader": {"get_data": None}, "Metrics.sample_and_eval": {"SampleAndEval": None}}
    for name, attributes in stubs.items():
        sys.modules[name] = types.ModuleType(name)
        vars(sys.modules[name]).update(attributes)
    sys.path.insert(0, root)
    try:
        from Trainer.cls_trainer import MaskGIT
    finally:
        sys.path.remove(root)
    return MaskGIT


def reference_args(args, device: torch.device) -> argparse.Namespace:
    """main.py's arguments as its training run sets them (main.py defaults, launch/run_cls_to_img.sh values)."""
    return argparse.Namespace(
        vit_size=args.size, codebook_size=args.codebook, mask_value=args.codebook, nb_class=1000, register=1,
        proj=1, dropout=args.dropout, dtype="bfloat16" if args.precision == "bf16" else "float32",
        compile=args.compile, use_ema=True, resume=False, vit_folder="", drop_label=0.1, grad_cum=1,
        sched_mode="arccos", sched_pow=2, warm_up=2500, max_iter=1_000_000, lr=1e-4, grad_clip=1.0,
        device=device, iter=0, global_epoch=0, is_master=False, is_multi_gpus=False, global_rank=0, nb_gpus=1)


def make_trainer(MaskGIT, args, device: torch.device):
    trainer = MaskGIT.__new__(MaskGIT)  # no __init__: it loads the VQGAN checkpoint and the data set
    trainer.args = reference_args(args, device)
    trainer.input_size = args.grid
    trainer.vit = trainer.get_network("vit")
    trainer.ema = trainer.get_network("ema")
    # The rest of MaskGIT.__init__ that the step uses, as written there:
    trainer.criterion = trainer.get_loss("cross_entropy", ignore_index=-100)
    trainer.optim = trainer.get_optim(trainer.vit, trainer.args.lr, betas=(0.9, 0.999), weight_decay=0.03)
    # Its autocast is CUDA-only (a null context on CPU); --precision bf16 on CPU autocasts on CPU instead.
    trainer.autocast = (torch.amp.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                        else contextlib.nullcontext())
    return trainer


def flops_per_image(MaskGIT, args) -> float:
    """FLOPs of one training image (forward, loss, backward), counted on an eager copy on the meta device. The
    reference scores every position, so the head on all of them is useful work."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        trainer = MaskGIT.__new__(MaskGIT)
        trainer.args = reference_args(argparse.Namespace(**{**vars(args), "compile": False}), torch.device("meta"))
        trainer.input_size = args.grid
        vit = trainer.get_network("vit")
        code = torch.randint(0, args.codebook, (1, args.grid, args.grid))
        counter = FlopCounterMode(display=False)
        with counter:
            pred = vit(x=code, y=torch.zeros(1, dtype=torch.long), drop_label=torch.zeros(1, dtype=torch.bool))
            loss = torch.nn.functional.cross_entropy(pred.reshape(-1, args.codebook + 1), code.reshape(-1))
            loss.backward()
    return float(counter.get_total_flops())


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, metavar="PATH", help="checkout of valeoai/Halton-MaskGIT")
    parser.add_argument("--size", default="xlarge", choices=SIZES + ("xl",), help="its transformer_size (xl = xlarge)")
    parser.add_argument("--grid", type=int, default=32, help="tokens per side")
    parser.add_argument("--codebook", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer, as its --compile")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="its transformer dropout (ours has none; its launch script uses 0.1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 rate, for an MFU line")
    args = parser.parse_args()
    args.size = "xlarge" if args.size == "xl" else args.size
    device = torch.device(args.device)
    # main.py sets these at import, for every run
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")

    MaskGIT = import_reference(args.reference)
    torch.manual_seed(0)
    trainer = make_trainer(MaskGIT, args, device)
    params = sum(p.numel() for p in trainer.vit.parameters())
    generator = torch.Generator().manual_seed(0)
    batches = [{"code": torch.randint(0, args.codebook, (args.batch, args.grid, args.grid), generator=generator),
                "y": torch.randint(0, 1000, (args.batch,), generator=generator)}
               for _ in range(args.warmup + args.steps)]
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device {name}, torch {torch.__version__}; reference {args.size} ({params / 1e6:.1f}M parameters), batch "
          f"{args.batch}, {args.precision}, compile {args.compile}")
    print(f"  {args.grid}x{args.grid} tokens, proj 1 (no patches), register 1, dropout {args.dropout}, codebook "
          f"{args.codebook}, 1000 classes; AdamW(betas (0.9, 0.999), weight decay 0.03), EMA 0.999 every step, "
          f"loss on every token")

    if args.warmup:
        trainer.train_data = batches[:args.warmup]
        trainer.train_one_epoch()
    start = now(device)
    trainer.train_data = batches[args.warmup:]
    trainer.train_one_epoch()
    seconds = now(device) - start
    images_per_s = args.batch * args.steps / seconds
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    print(f"{'reference':>9}: {1000 * seconds / args.steps:8.1f} ms/step  {images_per_s:8.1f} images/s  "
          f"peak memory {memory:.1f} GiB")
    if device.type == "cuda":  # one more step, untimed, with every host synchronisation reported
        trainer.train_data = batches[-1:]
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_one_epoch()
        torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchronizing CUDA operation" in str(w.message) for w in caught)
        print(f"reference host synchronisations per step: {syncs} (torch.cuda.set_sync_debug_mode)")
    if args.peak_tflops:
        flops = flops_per_image(MaskGIT, args)
        print(f"reference MFU {100 * flops * images_per_s / (args.peak_tflops * 1e12):5.1f}% "
              f"({flops / 1e9:.1f} GFLOP per image, the head on every position, all of them scored)")


if __name__ == "__main__":
    main()
