"""Training throughput and model-FLOPs utilisation (MFU): the FLOPs of one training image, the device's measured
matrix rate, and a callback that logs images/s, MFU and peak memory from the run itself.

FLOPs per image: ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward of the module's own
loss at batch 1, on a copy of the model on the meta device (no memory, no compute, the real shapes): every matmul
and attention call, the per-image AdaLN projections and, for text models, the cross-attention. The output head runs
on every position to keep shapes static, but only the scored (masked) tokens are useful work: the *model* FLOPs
count the head on the expected scored share only (E[mask ratio] of the schedule: 2/pi for arccos), the *executed*
FLOPs count it everywhere.

Peak: the dense bf16 matrix rate measured on the device (an 8192^3 product), not a datasheet figure: Lightning's
own table (``lightning.fabric.utilities.throughput``) lists the H100 and H200 with their sparse rates, twice what
dense matmuls can reach, which would halve every MFU.
"""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch

from halton.sampling.schedules import mask_ratio

PEAK_SIZE = 8192


def example_batch(model: torch.nn.Module, batch: int, device, generator: torch.Generator | None = None,
                  text_length: int = 120) -> dict[str, torch.Tensor]:
    """Random training inputs of ``model``'s shapes: codes and class labels, or codes and text embeddings with their
    padding mask (``text_length`` tokens; the paper's T5 length by default). Drawn on the CPU from ``generator``,
    then moved; on the meta device (shapes only) drawn there, without a generator."""
    home, generator = (device, None) if torch.device(device).type == "meta" else ("cpu", generator)
    out = {"codes": torch.randint(0, model.codebook_size, (batch, *model.grid), generator=generator, device=home)}
    if hasattr(model, "text_dim"):
        out["text_emb"] = torch.randn(batch, text_length, model.text_dim, generator=generator, device=home).bfloat16()
        lengths = torch.randint(1, text_length + 1, (batch, 1), generator=generator, device=home)
        out["text_mask"] = torch.arange(text_length, device=home) < lengths
    else:
        out["labels"] = torch.randint(0, model.num_classes, (batch,), generator=generator, device=home)
    return {name: value.to(device) for name, value in out.items()}


def scored_share(module) -> float:
    """The expected share of positions the loss scores: all with ``loss_on=all``, else the schedule's mean mask
    ratio (2/pi for arccos), computed on a fine grid of the schedule points."""
    if module.hparams.loss_on == "all":
        return 1.0
    masking = module.training_mask
    u = (torch.arange(1_000_000, dtype=torch.float64) + 0.5) / 1_000_000  # midpoints: 1e-10 of 2/pi for arccos
    if masking.t_min > 0:
        u = u.clamp(max=1 - masking.t_min)
    return float(mask_ratio(u, masking.schedule, **masking.options).mean())


def training_flops_per_image(module) -> tuple[float, float]:
    """(model FLOPs of one training image, with the head on the scored share of positions; FLOPs executed, with the
    head everywhere): one forward and backward of ``module.loss`` at batch 1 on a meta-device copy of the model."""
    from torch.utils.flop_counter import FlopCounterMode

    model = module.model
    with torch.device("meta"):
        probe = type(model)(**model._hub_mixin_config)
    batch = example_batch(probe, 1, "meta")
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = module.loss(batch, net=probe)
        loss.backward()
    executed = float(counter.get_total_flops())
    head = 3 * 2 * probe.num_tokens * probe.hidden_dim * (probe.codebook_size + 1)  # forward + backward
    return executed - head * (1 - scored_share(module)), executed


def measured_peak_tflops(device: torch.device | str, repeats: int = 10) -> float:
    """The device's dense bf16 matrix rate in TFLOP/s: the mean of ``repeats`` 8192^3 products on random data after
    three warm-ups (what MFU is measured against)."""
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(0)  # its own: training's random state stays as it was
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=torch.bfloat16, generator=generator)
            for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * PEAK_SIZE ** 3 * repeats / (time.perf_counter() - start) / 1e12


class Throughput(pl.Callback):
    """Logs ``perf/images_per_s`` (all ranks together), ``perf/mfu`` (per GPU, against ``peak_tflops``) and
    ``perf/peak_memory_gib`` every ``trainer.log_every_n_steps`` optimizer steps, from the run's own clock.

    The device is synchronised only at those steps (the loggers read the loss there anyway), so the steps between
    stay asynchronous. ``peak_tflops``: the dense bf16 matrix rate of one GPU; ``None`` measures it at the start
    (:func:`measured_peak_tflops`; on a CPU no MFU is logged). The FLOPs per image are counted once at the start
    (:func:`training_flops_per_image`) and logged as ``perf/gflop_per_image``."""

    def __init__(self, peak_tflops: float | None = None):
        super().__init__()
        self.peak_tflops = peak_tflops
        self.flops_per_image = math.nan
        self._last: tuple[float, int] | None = None
        self._images = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.flops_per_image = training_flops_per_image(pl_module)[0]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        if self.peak_tflops is None and device.type == "cuda":
            self.peak_tflops = measured_peak_tflops(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._last, self._images = None, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._images += batch["codes"].shape[0] * trainer.world_size
        step = trainer.global_step
        if step % trainer.log_every_n_steps:
            return
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if self._last is not None and step > self._last[1]:
            images_per_s = self._images / (now - self._last[0])
            metrics = {"perf/images_per_s": images_per_s, "perf/gflop_per_image": self.flops_per_image / 1e9}
            if self.peak_tflops:
                metrics["perf/mfu"] = (self.flops_per_image * images_per_s / trainer.world_size
                                       / (self.peak_tflops * 1e12))
            if device.type == "cuda":
                metrics["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._last, self._images = (now, step), 0
