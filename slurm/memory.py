"""Per-GPU memory of training the paper's 705M class-to-image model, to pick a strategy per GPU size.

    python slurm/memory.py                       # measures on CPU (about a minute), prints the table
    python slurm/memory.py --batches 1 2 --gpus 8 32

Weights, gradients, AdamW states and the EMA copy follow from the parameter count. Activations are measured: the
tensors autograd saves for the backward pass during a real forward of MaskGITModule's training step (bf16 autocast,
exactly 2/pi of the tokens masked: the mean of the arccos schedule), at two small batch sizes. The difference gives
the bytes per sample; the rest (the bf16 copies of the weights that autocast keeps for the backward) is constant.
The same with activation checkpointing of every transformer block (FSDP's activation_checkpointing_policy).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.utils.checkpoint import checkpoint

from halton.models import build_transformer
from halton.models.layers import AdaLNBlock
from halton.training import MaskGITModule

GIB = 1024 ** 3


def saved_bytes(module: MaskGITModule, batch: int, seed: int = 0) -> tuple[int, float]:
    """Bytes of the distinct tensors saved for backward by one training step's forward; and the step's seconds
    (forward and backward)."""
    net = module.model
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, net.codebook_size, (batch, *net.grid), generator=generator)
    labels = torch.randint(0, net.num_classes, (batch,), generator=generator)
    num_tokens = net.num_tokens
    masked = round(num_tokens * 2 / math.pi)  # E[arccos(u) / (pi / 2)] = 2 / pi of the tokens
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool)
    mask[:, torch.randperm(num_tokens, generator=generator)[:masked]] = True
    module.mask_codes = lambda c: (mask, None)
    module.log = lambda *args, **kwargs: None
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:  # the fp32 weights themselves are counted apart
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = module._step({"codes": codes, "labels": labels}, "train")
    loss.backward()
    module.zero_grad(set_to_none=True)
    return sum(storages.values()), time.perf_counter() - start


def checkpoint_blocks(net: torch.nn.Module) -> None:
    """Recompute every block in the backward pass. The reentrant form saves the block inputs with
    save_for_backward, where the hooks above see them (as activation checkpointing keeps them)."""
    for block in net.modules():
        if isinstance(block, AdaLNBlock):
            forward = block.forward
            block.forward = lambda *args, forward=forward: checkpoint(forward, *args, use_reentrant=True)


def per_sample_and_constant(module: MaskGITModule, small: int, large: int) -> tuple[float, float, list[str]]:
    measured = {b: saved_bytes(module, b) for b in (small, large)}
    per_sample = (measured[large][0] - measured[small][0]) / (large - small)
    constant = measured[small][0] - small * per_sample
    notes = [f"batch {b}: {measured[b][0] / GIB:.3f} GiB saved, step {measured[b][1]:.0f} s" for b in (small, large)]
    return per_sample, constant, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs=2, default=[1, 2], help="the two measured batch sizes")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 32], help="GPU counts sharing the global batch")
    parser.add_argument("--global-batch", type=int, default=256)
    args = parser.parse_args()

    torch.manual_seed(0)
    net = build_transformer("xl", 16384, 32, 1000, patch_size=2)
    module = MaskGITModule(net, label_dropout=0.1)
    params = sum(p.numel() for p in net.parameters())
    small, large = args.batches
    per_sample, constant, notes = per_sample_and_constant(module, small, large)
    print(f"parameters: {params / 1e6:.2f}M; {'; '.join(notes)}; per sample {per_sample / GIB:.3f} GiB, "
          f"constant {constant / GIB:.2f} GiB")
    checkpoint_blocks(net)
    per_sample_ac, constant_ac, notes = per_sample_and_constant(module, small, large)
    print(f"with activation checkpointing: {'; '.join(notes)}; per sample {per_sample_ac / GIB:.3f} GiB, "
          f"constant {constant_ac / GIB:.2f} GiB")

    state = {"weights (fp32)": 4 * params, "gradients (fp32)": 4 * params, "AdamW m, v (fp32)": 8 * params,
             "EMA copy (fp32)": 4 * params, "bf16 weight copies (autocast)": constant}
    print("\n| per GPU | GiB |\n| --- | --- |")
    for name, size in state.items():
        print(f"| {name} | {size / GIB:.2f} |")
    for gpus in args.gpus:
        batch = args.global_batch // gpus
        print(f"| activations, batch {batch} ({args.global_batch} / {gpus} GPUs) | {batch * per_sample / GIB:.2f} |")
        print(f"| the same, activation checkpointing | {batch * per_sample_ac / GIB:.2f} |")
    model_state = sum(state.values())
    ema = state["EMA copy (fp32)"]
    print(f"\nDDP, per GPU: {model_state / GIB:.1f} GiB (without EMA {(model_state - ema) / GIB:.1f}) + activations")
    for gpus in args.gpus:
        batch = args.global_batch // gpus
        # FSDP gathers each block's bf16 weights just in time and frees them after: no constant bf16 copy.
        sharded = 16 * params / gpus  # fp32 weights, gradients and AdamW states split over the GPUs
        print(f"FSDP over {gpus} GPUs (batch {batch}), per GPU: {sharded / GIB:.1f} GiB + activations "
              f"{batch * per_sample / GIB:.1f} (with activation checkpointing {batch * per_sample_ac / GIB:.1f}); "
              "no EMA")

if __name__ == "__main__":
    main()
