"""Atomic checkpoint writes for Lightning: a crash or kill during a save leaves the previous file intact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from halton.utils.files import atomic_write, remove_stale_temporaries


def save_durably(obj: Any, path: str | Path) -> None:
    """torch.save, then fsync: the bytes are on disk before the rename publishes them (a node crash right after
    the rename must not leave an empty or partial file under the final name)."""
    with open(path, "wb") as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, syncs it, then renames it over the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        # Only rank 0 writes a given path, and only one run writes a run folder (its lock, halton.utils.run_lock),
        # so a temporary of it that exists now was left by a killed writer.
        remove_stale_temporaries(path.parent, path.name)
        atomic_write(path, lambda tmp: save_durably(checkpoint, tmp))
        fsync_directory(path.parent)
