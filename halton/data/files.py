"""Atomic writes of shared data files (shards, records, manifests)."""

from __future__ import annotations

import os
from pathlib import Path

from halton.utils.checkpoint import atomic_write


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_shared(path: str | Path, write) -> Path:
    """:func:`halton.utils.checkpoint.atomic_write`, but the file gets the usual permissions (the temporary file
    is private): shards on a cluster file system are read by other users' jobs."""

    def write_then_open_up(tmp: str) -> None:
        write(tmp)
        os.chmod(tmp, _default_mode())

    return atomic_write(path, write_then_open_up)
