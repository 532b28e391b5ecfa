"""Stop a run whose training diverged before it writes a checkpoint of non-finite weights."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging

from halton.utils.checkpoint import count_non_finite

EXIT_STATUS = 3  # a diverged run (2: a refused input, 130/143: stopped by a signal after saving)
log = logging.getLogger("halton")


class Diverged(SystemExit):
    """Training stopped because the loss, the gradient norm or the weights stopped being finite; a ``SystemExit``
    with status :data:`EXIT_STATUS`, raised after the one line was logged (``message``)."""

    def __init__(self, message: str):
        super().__init__(EXIT_STATUS)
        self.message = message


class DivergenceGuard(Callback):
    """Stops training at the first non-finite training loss or gradient norm, and refuses every checkpoint save
    while the live or EMA weights are not all finite, so the last good ``last.ckpt`` and numbered checkpoints
    survive a run that diverged.

    Without a host-device synchronisation per step: each step folds ``isfinite`` of the loss and of the gradient
    norm (the one ``MaskGITModule.configure_gradient_clipping`` computes for the clipping, else one fused norm of
    the gradients here) into a flag on the device, with the first bad step. The flag is read where the run waits
    for the device anyway: every ``trainer.log_every_n_steps`` steps, before each validation and at the end of
    training; every save (ModelCheckpoint, the preemption callback, ``trainer.save_checkpoint``) also checks the
    weights, one fused norm over them. A run that diverged stops with one line naming the step and the last good
    checkpoint, exit status 3 (:class:`Diverged`).

    It stops rather than skipping the step: by the time the flag is read the optimizer has applied the step (to
    the weights and AdamW's moments), so undoing it would need a synchronisation before every update, and a run
    whose loss became NaN at a given learning rate rarely recovers by skipping batches. Under fp16's gradient
    scaler (``16-mixed``) a non-finite gradient is routine (the scaler skips that step), so only the loss and the
    weights are checked there."""

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None   # device: the first step with a non-finite loss or norm, or -1
        self._values: torch.Tensor | None = None      # device: [loss, gradient norm] at that step
        self._saved_step: int | None = None           # the step of the last save this run let through

    # ------------------------------------------------------------------ per step, on the device
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_bad = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self._values = torch.zeros(2, device=pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or self._first_bad is None:
            return
        boundary = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        step = trainer.global_step + (0 if boundary else 1)  # the optimizer step this batch counts towards
        loss = loss.detach().float().reshape(())
        bad = ~torch.isfinite(loss)
        norm = self._gradient_norm(trainer, pl_module) if boundary else None
        if norm is not None:
            bad = bad | ~torch.isfinite(norm)
        first = bad & (self._first_bad < 0)
        self._first_bad = torch.where(first, step, self._first_bad)
        now = torch.stack([loss, norm.float().reshape(()) if norm is not None else torch.zeros_like(loss)])
        self._values = torch.where(first, now, self._values)
        if boundary and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self.stop_if_diverged(trainer)

    def _gradient_norm(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return None  # fp16: the scaler skips steps with non-finite gradients by design
        norm = pl_module.__dict__.pop("grad_norm", None)  # the clipping's, this step
        if norm is not None:
            return norm
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return None
        return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))

    # ------------------------------------------------------------------ where the run synchronises anyway
    def _diverged_step(self, trainer: pl.Trainer) -> int | None:
        if self._first_bad is None:
            return None
        step = int(self._first_bad)
        # Every rank takes the same decision (a NaN loss on one rank poisons every rank's reduced gradients).
        if not trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            return None
        return step if step >= 0 else trainer.global_step

    def stop_if_diverged(self, trainer: pl.Trainer) -> None:
        step = self._diverged_step(trainer)
        if step is not None:
            loss, norm = (float(v) for v in self._values)
            self._stop(trainer, f"training diverged at step {step}: the loss is {loss:.4g}"
                                + (f", the gradient norm {norm:.4g}" if norm else ""))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop_if_diverged(trainer)  # the sample grids would draw from non-finite weights

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop_if_diverged(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.stop_if_diverged(trainer)
        tensors = list(pl_module.parameters())
        for callback in trainer.callbacks:  # the EMA, wherever it is in the list
            average = getattr(callback, "_average_model", None) if isinstance(callback, WeightAveraging) else None
            if average is not None:
                tensors += list(average.parameters())
        bad, total = count_non_finite(tensors)
        if trainer.strategy.reduce_boolean_decision(bad > 0, all=False):
            self._stop(trainer, f"the weights stopped being finite by step {trainer.global_step} ({bad:,} of "
                                f"{total:,} live and EMA values are NaN or infinite)")
        self._saved_step = trainer.global_step

    def _stop(self, trainer: pl.Trainer, reason: str) -> None:
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if self._saved_step is not None:
            kept = f"the last checkpoint saved is of step {self._saved_step}" + (f" in {folder}" if folder else "")
        elif trainer.ckpt_path:
            kept = f"{trainer.ckpt_path}, which this run resumed from, is as it was"
        else:
            kept = "no checkpoint was saved by this run"
        message = (f"{reason}; stopped at step {trainer.global_step} without saving it, {kept} (lower model.lr or "
                   "raise model.warmup_steps, then resume from it)")
        if trainer.is_global_zero:
            log.error("error: %s", message)
        raise Diverged(message)
