"""Train a MaskGIT transformer: python train.py experiment=digits (see conf/train.yaml)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from halton.cli import CONFIG_DIR, entry_point, resume_candidate, run
from halton.utils import run_lock
from halton.utils.files import require_file

log = logging.getLogger("halton.train")


def resume_from(cfg: DictConfig) -> str | None:
    if cfg.ckpt_path:  # a local path, or hf://owner/repo/file (its copy in the Hugging Face cache)
        return str(require_file(cfg.ckpt_path, "ckpt_path"))
    if not cfg.resume:
        return None
    path, _ = resume_candidate(cfg)
    if path:
        log.info(f"resuming from {path}")
    return path


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@entry_point
def main(cfg: DictConfig) -> None:
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    from halton.training import AtomicCheckpointIO, cluster_plugins
    from halton.utils.files import remove_stale_temporaries

    for note in run_lock.notes():
        log.warning(note)
    # The run folder's lock holder (halton.cli.run): no other run writes here, and no rank saves before training
    # starts, so a temporary found now was left by a dead run.
    if cfg.callbacks.get("model_checkpoint") and run_lock.launching_process():
        for stale in remove_stale_temporaries(cfg.callbacks.model_checkpoint.dirpath):
            log.info(f"removed {stale}, left by a save that was interrupted")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    # Under SLURM: Lightning's SLURMEnvironment without its auto-requeue (the preemption callback requeues).
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          plugins=[AtomicCheckpointIO(), *cluster_plugins()])
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from(cfg))
    # One line per rank: a multi-rank job's log shows every rank got to the end.
    log.info(f"rank {trainer.global_rank}/{trainer.world_size}: trained to step {trainer.global_step}")


def cli() -> None:
    """``python train.py ARGS`` and the console script ``halton-train ARGS``."""
    run(main, "train")


if __name__ == "__main__":
    cli()
