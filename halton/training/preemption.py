"""Stop cleanly when the cluster or the user says so: a checkpoint of the current step, then exit (and requeue under
SLURM)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")
EXIT_STATUS = 128 + signal.SIGTERM  # what a process killed by SIGTERM reports
INTERRUPTED_STATUS = 128 + signal.SIGINT  # a shell's status after Ctrl-C
log = logging.getLogger(__name__)


def parse_signal(name: str) -> signal.Signals:
    if name not in REQUEUE_SIGNALS:
        raise ValueError(f"unknown requeue_signal {name!r}; allowed: {', '.join(REQUEUE_SIGNALS)}")
    return signal.Signals[name]


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` in a job array, else ``SLURM_JOB_ID``."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def cluster_plugins() -> list[Any]:
    """Plugins train.py adds under SLURM: Lightning's SLURMEnvironment (ranks, nodes, main address from the SLURM
    variables) without its auto-requeue, whose SIGUSR1 handler saves inside the signal handler, possibly halfway
    through a step (and into a new hpc_ckpt_<n>.ckpt each time). PreemptionCheckpoint saves and requeues at a step
    boundary instead; during training it also replaces Lightning's SIGTERM handler, which runs a collective inside
    the handler under DDP."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class PreemptionCheckpoint(Checkpoint):
    """Ends training at the next step boundary when the job is told to stop, after writing a checkpoint of that
    step to ``path`` (train.py resumes from ``<run>/checkpoints/last.ckpt``):

    - SIGTERM (``scancel``, preemption, the end of the time limit, a requeue): save and stop.
    - SIGINT (Ctrl-C): save and stop, exit status 130; a second Ctrl-C stops at once, without saving.
    - ``requeue_signal`` (SIGUSR1; ``#SBATCH --signal=SIGUSR1@90`` sends it 90 s before the time limit): save,
      stop and, when ``requeue`` and running under SLURM, ``scontrol requeue`` the job, which then starts again and
      resumes from ``path``.

    The handlers only record the signal. After every optimizer step the ranks agree whether any of them got one,
    and all of them save and stop at that same step, so the checkpoint holds a whole step on every rank.
    Training stops by raising Lightning's ``SIGTERMException`` (a ``SystemExit``) with exit status 143 (130 after
    Ctrl-C).

    A ``Checkpoint`` subclass, so Lightning calls its hooks after the other callbacks' (the EMA update comes first).
    """

    def __init__(self, path: str, requeue: bool = True, requeue_signal: str = "SIGUSR1"):
        self.path = Path(path)
        self.requeue = requeue
        self.requeue_signal = parse_signal(requeue_signal)
        self.received: signal.Signals | None = None
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self._announce = False  # rank 0 says at once that Ctrl-C was heard

    # ------------------------------------------------------------------ handlers
    def _record(self, signum: int, frame: Any) -> None:
        # SIGTERM wins over Ctrl-C, and both over the requeue signal: a job being stopped must not requeue itself.
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if signum == signal.SIGINT and self._announce:
            os.write(2, b"Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again: stop now)\n")
        if self.received != signal.SIGTERM and not (signum == self.requeue_signal and self.received is not None):
            self.received = signal.Signals(signum)

    def _install(self, signum: signal.Signals) -> None:
        if signum not in self._previous_handlers:
            self._previous_handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, self._record)

    def _uninstall(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # early: the requeue signal's default action would kill the process
            self.received = None
            self._install(self.requeue_signal)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(signal.SIGTERM)  # after Lightning has installed its own SIGTERM handler, which this replaces
        self._install(signal.SIGINT)  # Ctrl-C: otherwise Lightning stops without saving the steps since the last save
        self._announce = trainer.is_global_zero

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._uninstall()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._uninstall()

    # ------------------------------------------------------------------ step boundary
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the gradients so far would not be in the checkpoint
        # One tiny all-reduce per step under DDP (Lightning's own per-step SIGTERM broadcast costs the same).
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        # Every rank takes the same decisions: SIGTERM on any rank wins over the requeue signal.
        terminated = trainer.strategy.reduce_boolean_decision(self.received == signal.SIGTERM, all=False)
        interrupted = not terminated and trainer.strategy.reduce_boolean_decision(self.received == signal.SIGINT,
                                                                                    all=False)
        reason = "SIGTERM" if terminated else "SIGINT" if interrupted else self.requeue_signal.name
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole training state
        rank_zero_info(f"{reason}: saved {self.path} at step {trainer.global_step}")
        if self.requeue and not terminated and not interrupted:
            if trainer.is_global_zero:
                self._requeue_job()
            trainer.strategy.barrier("requeue")  # no rank exits (srun --kill-on-bad-exit) before the requeue is done
        log.info(f"rank {trainer.global_rank}/{trainer.world_size}: stopped at step {trainer.global_step} ({reason})")
        raise SIGTERMException(INTERRUPTED_STATUS if interrupted else EXIT_STATUS)

    def _requeue_job(self) -> None:
        job_id = slurm_job_id()
        if job_id is None:
            rank_zero_warn(f"{self.requeue_signal.name} received outside a SLURM job: nothing to requeue")
            return
        # The job goes back to the queue and SLURM sends this job SIGTERM; the checkpoint is already written.
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode == 0:
            rank_zero_info(f"requeued SLURM job {job_id}")
        else:
            rank_zero_warn(f"scontrol requeue {job_id} failed ({result.returncode}): {result.stderr.strip()}")
