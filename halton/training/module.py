"""The Lightning module that trains a MaskGIT transformer on token codes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from halton.conditions import ClassKind, ConditionKind
from halton.models import compile_blocks
from halton.options.training import LOSS_ON, MaskingOptions, OptimizerOptions
from halton.sampling import as_scheduler, sample
from halton.training.float8 import check_float8_device, convert_blocks_to_float8
from halton.training.masking import TrainingMask

__all__ = ["LOSS_ON", "MaskGITModule", "masked_token_loss"]


def masked_token_loss(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                      scored: torch.Tensor, token_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss from the hidden states, and how many masked tokens the head predicts right.

    The head runs on every position and the loss is weighted by ``scored``: static shapes, so no host-device sync
    (selecting the scored tokens first would make their number a host value every step). The unscored positions
    (a third on average) cost 5% more FLOPs in the XL step: 851 against 809 GFLOP per image. eMIGM with
    ``loss_weight=schedule``: sum(ce * w * scored) / sum(scored), each token weighted by its sample's w.
    Compiled (``compile=True``), the fp32 upcast, log-softmax, target gather and argmax of the [B, N, 16k] logits
    and their backward become a few fused passes over the bf16 logits instead of materialising fp32 copies."""
    logits = model.training_logits(hidden).float()  # classes padded with -inf (tensor-core shapes)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    loss = (ce * token_weights).sum() / scored.sum()
    correct = ((logits.detach().argmax(-1) == targets) & mask).sum()
    return loss, correct


class MaskGITModule(pl.LightningModule):
    """Masked-token training: per sample a mask ratio from the schedule, each token masked independently with
    that probability, cross-entropy on the masked tokens (``loss_on: all`` scores every token, as the reference
    code does); ``masking``, ``loss_weight``, ``t_min``, ``t_per``, ``schedule_power`` and ``schedule_rate`` give
    eMIGM's variants (:mod:`halton.training.masking`; with ``loss_weight: schedule`` the loss is
    sum(ce * w * scored) / sum(scored), w the sample's weight). The condition is replaced by the null condition
    with probability ``label_dropout`` for classifier-free guidance. ``condition`` is the kind of condition (class
    labels by default, or text: see :mod:`halton.conditions`); the module does not depend on which.

    Optimisation: AdamW, linear warmup then cosine decay (torch's schedulers), stepped every optimizer step.
    Every validation, ``sample_grid`` settings (if given: ``scheduler``, ``per_class`` and ``sample()``'s options)
    draw one row of samples per class (per prompt for text), decoded with the data module's tokenizer, saved as a PNG and sent to the
    loggers; with the EMA callback they use the averaged weights.
    """

    def __init__(self, net: nn.Module | Mapping, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.96),
                 weight_decay: float = 5e-5, warmup_steps: int = 2500, total_steps: int = 2_000_000,
                 min_lr_ratio: float = 0.0, mask_schedule: str = "arccos", loss_on: str = "masked",
                 label_dropout: float = 0.1, compile: bool = False, sample_grid: dict[str, Any] | None = None,
                 condition: ConditionKind | None = None, masking: str = "independent", loss_weight: str = "none",
                 t_min: float = 0.0, t_per: str = "sample", schedule_power: float = 0.5,
                 schedule_rate: float = 5.0, fp8: bool = False):
        super().__init__()
        # The option objects check every value (the pre-flight stage builds the same ones from the config).
        self.masking_options = MaskingOptions(mask_schedule, masking, loss_weight, t_min, t_per, schedule_power,
                                              schedule_rate, loss_on, label_dropout)
        self.optimizer_options = OptimizerOptions(lr, betas, weight_decay, warmup_steps, total_steps, min_lr_ratio)
        self.training_mask = TrainingMask(options=self.masking_options)
        betas = self.optimizer_options.betas  # plain floats, so checkpoints load with torch.load(weights_only=True)
        self.grid_scheduler = None
        if sample_grid is not None:
            # The scheduler comes as an object (Hydra instantiates the config's scheduler group), a name or a spec.
            sample_grid = dict(sample_grid)
            self.grid_scheduler = as_scheduler(sample_grid.pop("scheduler", "halton"))
            sample_grid = {**OmegaConf.to_container(OmegaConf.create(sample_grid), resolve=True),
                           "scheduler": self.grid_scheduler.spec()}
        self.save_hyperparameters(ignore=["net", "condition"])
        # The network and the condition kind come built (Hydra's instantiate) or, from a checkpoint's hyperparameters
        # (MaskGITModule.load_from_checkpoint(path)), as the specs recorded here.
        net, condition = (instantiate(part) if isinstance(part, Mapping) else part for part in (net, condition))
        self.condition = condition or ClassKind()
        self.model = net
        self.hparams["net"] = {"_target_": f"{type(net).__module__}.{type(net).__qualname__}", **net.init_config}
        self.hparams["condition"] = self.condition.spec()
        if fp8:  # before compiling: the compiled blocks fuse FP8's scaling into their kernels
            convert_blocks_to_float8(self.model)
        self.token_loss = masked_token_loss
        if compile:  # the transformer blocks (the module calls the trunk and head, not forward), and the loss
            compile_blocks(self.model)
            self.token_loss = torch.compile(masked_token_loss, dynamic=False)

    # ---------------------------------------------------------------- training
    def mask_codes(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Boolean mask [B, N], True where the token is hidden from the model (at least one per sample), and each
        sample's loss weight [B] with ``loss_weight: schedule`` (None otherwise). Tools and tests replace it with a
        function returning a fixed mask."""
        return self.training_mask(codes)

    def loss(self, batch: dict[str, torch.Tensor], net: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of a batch and the accuracy on its masked tokens (device tensors: nothing here waits
        for the device). ``net``: another model of the same configuration to run instead, eagerly (the FLOP
        count runs a meta-device copy)."""
        codes = batch["codes"]
        condition = self.condition.from_batch(batch)
        flat = codes.reshape(codes.shape[0], -1)
        mask, weights = self.mask_codes(codes)
        drop = torch.rand(codes.shape[0], device=codes.device) < self.hparams.label_dropout
        model, token_loss = (self.model, self.token_loss) if net is None else (net, masked_token_loss)
        hidden = condition.trunk(model, flat.masked_fill(mask, model.mask_id), drop)
        scored = mask if self.hparams.loss_on == "masked" else torch.ones_like(mask)
        token_weights = scored.float() if weights is None else scored * weights[:, None]
        loss, correct = token_loss(model, hidden, flat, mask, scored, token_weights)
        return loss, correct.detach() / mask.sum()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, accuracy = self.loss(batch)
        size = batch["codes"].shape[0]  # a batch may also hold captions and embeddings: Lightning would have to guess
        # Not prog_bar in training: Lightning turns prog_bar values into Python numbers after every batch, a
        # host-device synchronisation per step; StepProgressBar reads the training loss at its refreshes instead.
        evaluating = stage != "train"
        self.log(f"{stage}/loss", loss, prog_bar=evaluating, sync_dist=evaluating, batch_size=size)
        self.log(f"{stage}/acc", accuracy, prog_bar=evaluating, sync_dist=evaluating, batch_size=size)
        return loss

    def on_fit_start(self) -> None:
        if self.hparams.fp8:
            check_float8_device(self.device)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.condition.check_data(datamodule)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        # Fused AdamW (one kernel for every parameter) where the weights are on a GPU, except with fp16's gradient
        # scaler (Lightning's 16-mixed), which a fused optimizer would unscale after the clipping.
        precision = str(getattr(self._trainer, "precision", ""))
        fused = all(p.is_cuda for p in self.model.parameters()) and precision != "16-mixed"
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, betas=tuple(hp.betas),
                                      weight_decay=hp.weight_decay, fused=fused or None)
        decay_steps = max(hp.total_steps - hp.warmup_steps, 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, decay_steps, eta_min=hp.lr * hp.min_lr_ratio)
        if hp.warmup_steps > 0:
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0 / hp.warmup_steps, 1.0, hp.warmup_steps)
            schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], [hp.warmup_steps])
        else:
            schedule = cosine
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer (for fp16's gradient scaler,
        # which the optimizer would unscale itself); bf16 has no scaler, so the gradients are clipped here. The norm
        # (a device tensor) is kept for halton.training.DivergenceGuard, which would compute it again otherwise.
        if gradient_clip_val and optimizer.defaults.get("fused"):
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            else:
                self.grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---------------------------------------------------------------- sample grids
    def on_validation_epoch_start(self) -> None:
        # Runs after the callbacks' hooks, so the EMA callback has already swapped in the averaged weights.
        settings = self.hparams.sample_grid
        if not settings or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)  # may load the VQ weights: only when needed
        if tokenizer is None:
            return
        from halton.utils.images import class_grid, save_png

        settings = {k: v for k, v in settings.items() if k != "scheduler"}
        per_class = settings.pop("per_class", 8)
        values = self.condition.grid_values(self.model)
        if not values:
            return
        rows = torch.arange(len(values), device=self.device).repeat_interleave(per_class)
        condition = self.condition.make(values, self.device).index(rows)
        codes = sample(self.model, self.grid_scheduler, condition, seed=self.global_step, **settings).codes
        images = tokenizer.to(self.device).decode(codes)
        grid = class_grid(images, len(values), per_class, row_labels=[self.condition.label(v) for v in values])
        path = Path(self.trainer.log_dir or ".") / "samples" / f"step_{self.global_step:07d}.png"
        save_png(grid, path)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("samples", grid, self.global_step)
            elif hasattr(logger, "log_image"):  # Weights & Biases
                logger.log_image("samples", [grid], step=self.global_step)
