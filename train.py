"""Train a MaskGIT transformer: python train.py experiment=digits (see conf/train.yaml)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from halton.cli import check_overrides, entry_point
from halton.training import AtomicCheckpointIO, cluster_plugins

log = logging.getLogger("halton.train")


def resume_from(cfg: DictConfig) -> str | None:
    if cfg.ckpt_path:
        return str(cfg.ckpt_path)
    last = Path(cfg.callbacks.model_checkpoint.dirpath) / "last.ckpt"
    if cfg.resume and last.is_file():
        log.info(f"resuming from {last}")
        return str(last)
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@entry_point
def main(cfg: DictConfig) -> None:
    pl.seed_everything(cfg.seed, workers=True)
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


if __name__ == "__main__":
    check_overrides(sys.argv[1:], "train")
    main()
