"""Random generator states in checkpoints, so that a resumed run draws the same masks and label dropouts."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

CHECKPOINT_KEY = "rng_states"


def collect_rng_states() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as plain containers and tensors (the
    checkpoint stays loadable with ``torch.load(weights_only=True)``)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGStateCheckpoint(Callback):
    """Saves every rank's generator states in each checkpoint (Lightning saves none) and restores this rank's right
    before the first training step of a resumed run.

    Validation draws from the same generators (masking in ``validation_step``, the validation DataLoader's base
    seed); a run resumed from a checkpoint written at a validation step does not repeat that validation, so the
    training stream is put back after every validation to keep resumed and uninterrupted runs identical.
    """

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None
        self._training_stream: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Every rank is here at once (Trainer.save_checkpoint runs on all of them); only rank 0 writes the file.
        states = collect_rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            checkpoint[CHECKPOINT_KEY] = gathered
        else:
            checkpoint[CHECKPOINT_KEY] = [states]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._to_restore = checkpoint.get(CHECKPOINT_KEY)
        if self._to_restore is None:
            rank_zero_warn("the checkpoint holds no random generator states (written before RNGStateCheckpoint "
                           "was used); masks and label dropout will not continue the interrupted run's stream")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # As late as possible: on resume Lightning may open the validation loader (which draws a base seed) between
        # on_train_start and the first step, without validating.
        if not self._to_restore:
            return
        states, self._to_restore = self._to_restore, None
        if len(states) != trainer.world_size:
            rank_zero_warn(f"the checkpoint holds generator states of {len(states)} ranks but this run has "
                           f"{trainer.world_size}; rank r takes the states of rank r mod {len(states)}")
        set_rng_states(states[trainer.global_rank % len(states)])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Taken after every step: a validation's DataLoader draws its base seed before on_validation_start.
        self._training_stream = collect_rng_states()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._training_stream is not None and not trainer.sanity_checking:  # only set while fitting
            set_rng_states(self._training_stream)
