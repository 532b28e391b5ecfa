"""A training progress bar counted in optimizer steps: step-based runs (``max_steps``, ``max_epochs=-1``) have no
meaningful epoch total, so one bar shows the steps done out of ``max_steps``, the rate and the time left. Off a
terminal (a log file, SLURM's output) it follows :mod:`halton.utils.progress`: one line per refresh, and no
validation bars."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from halton.utils.progress import bar_stream, on_terminal


class StepProgressBar(TQDMProgressBar):
    """``training 1234/5000 [02:01<06:10, 10.2it/s, epoch=14, train/loss=2.31]``. A resumed run starts the bar at
    its global step (the rate and time left count only this run's steps). Epoch-based runs keep Lightning's bar.

    ``train_metrics``: logged training values shown in the bar, read from the device only when the bar refreshes
    (every ``refresh_rate`` steps). The module logs them without ``prog_bar``, which Lightning would read after
    every batch, stalling the host until the GPU has finished the step. Lightning's logger version (``v_num``)
    is left out: the run folder names the run."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 train_metrics: Sequence[str] = ("train/loss",)):
        super().__init__(refresh_rate, process_position, leave)
        self.train_metrics = tuple(train_metrics)

    def get_metrics(self, trainer, pl_module) -> dict:
        logged = trainer.callback_metrics
        shown = {name: logged[name].item() for name in self.train_metrics if name in logged}
        metrics = shown | super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def _counts_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    def init_train_tqdm(self) -> Tqdm:
        terminal = on_terminal(sys.stdout)
        if not self._counts_steps() and terminal:
            return super().init_train_tqdm()
        steps = dict(desc="training", total=self.trainer.max_steps, initial=self.trainer.global_step)
        return Tqdm(**(steps if self._counts_steps() else dict(desc=self.train_description)),
                    position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=terminal,
                    file=bar_stream(sys.stdout), smoothing=0, bar_format=self.BAR_FORMAT)

    # Validation, sanity check, test and predict bars: off a terminal none (a line per batch says nothing a log needs)
    def init_sanity_tqdm(self) -> Tqdm:
        return super().init_sanity_tqdm() if on_terminal(sys.stdout) else Tqdm(disable=True)

    def init_validation_tqdm(self) -> Tqdm:
        return super().init_validation_tqdm() if on_terminal(sys.stdout) else Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        return super().init_test_tqdm() if on_terminal(sys.stdout) else Tqdm(disable=True)

    def init_predict_tqdm(self) -> Tqdm:
        return super().init_predict_tqdm() if on_terminal(sys.stdout) else Tqdm(disable=True)

    def on_train_epoch_start(self, trainer, *args) -> None:
        if not self._counts_steps():
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._counts_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        step = trainer.global_step
        if not bar.disable and (step % self.refresh_rate == 0 or step == bar.total):
            bar.n = step
            bar.set_postfix({"epoch": trainer.current_epoch, **self.get_metrics(trainer, pl_module)})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._counts_steps():
            super().on_train_epoch_end(trainer, pl_module)
