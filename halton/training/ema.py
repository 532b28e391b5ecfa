"""The EMA of the weights: Lightning's ``EMAWeightAveraging`` with a fused, sync-free update on the model's device."""

from __future__ import annotations

import itertools

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` (same arguments, same checkpoint contents and state key, so runs resume across the two)
    with two differences that matter on a GPU:

    - the average lives on the device the model trains on: Lightning builds it in ``setup``, before the strategy
      moves the model, so with the model still on the CPU there (as ``train.py`` hands it over) every step copied
      all weights to the host and averaged them there; it is moved to the module's device at ``on_fit_start``
      unless ``device`` was given;
    - one ``torch._foreach_lerp_`` over all floating tensors per step instead of ``AveragedModel``'s per-tensor
      ``avg_fn`` (four kernels per tensor) and its ``n_averaged == 0`` test, which synchronises with the host.
    """

    def __init__(self, decay: float = 0.999, **kwargs):
        super().__init__(decay=decay, **kwargs)
        self.decay = decay
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._averaged_before: bool | None = None  # host copy of n_averaged > 0

    @property
    def state_key(self) -> str:
        return "EMAWeightAveraging"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is None:
            return
        if self._device is None:
            self._average_model.to(pl_module.device)
        self._pairs = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self._averaged_before = None  # read again from the restored n_averaged

    def _tensor_pairs(self, pl_module: pl.LightningModule) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(averaged, current) floating tensors, parameters then buffers as ``AveragedModel`` orders them."""
        if self._pairs is None:
            average = self._average_model.module
            tensors = zip(itertools.chain(average.parameters(), average.buffers()),
                          itertools.chain(pl_module.parameters(), pl_module.buffers()), strict=True)
            pairs = [(a.detach(), c.detach()) for a, c in tensors if a.is_floating_point()]
            self._pairs = ([a for a, _ in pairs], [c for _, c in pairs])
        return self._pairs

    @torch.no_grad()
    def _update(self, pl_module: pl.LightningModule) -> None:
        averaged, current = self._tensor_pairs(pl_module)
        if self._averaged_before is None:  # one synchronisation, at the first update of a run
            self._averaged_before = bool(self._average_model.n_averaged > 0)
        if averaged[0].device != current[0].device:  # an average kept elsewhere (``device=``)
            current = [c.to(averaged[0].device, non_blocking=True) for c in current]
        # The first update copies, as AveragedModel does (weight 1).
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay if self._averaged_before else 1.0)
        self._average_model.n_averaged.add_(1)
        self._averaged_before = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._update(pl_module)
            self._latest_update_epoch = trainer.current_epoch
