"""Checkpoint and file helpers: clear errors for missing files, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def require_file(path: str | Path | None, what: str = "file", hint: str = "") -> Path:
    """The path as a Path, or a one-line FileNotFoundError naming it (followed by ``hint``)."""
    if path is None or str(path) in ("", "None", "null"):
        raise FileNotFoundError(f"no {what} path given; pass {what}=PATH")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}{hint}")
    return path


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
