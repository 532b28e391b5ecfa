"""Reading checkpoints safely (weights only, one clear line for a damaged file) and writing them atomically."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from halton.utils.files import atomic_write, require_file

ZIP_MAGIC = b"PK\x03\x04"    # torch.save's format since torch 1.6
PICKLE_MAGIC = b"\x80"       # torch.save(..., _use_new_zipfile_serialization=False) and plain pickles


def read_checkpoint(path: str | Path | None, what: str = "checkpoint", hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped when the file is a zip), or a one-line
    ValueError naming the file and saying what is wrong: missing, empty, not a checkpoint, truncated or damaged,
    or holding pickled code (refused, never run)."""
    path = require_file(path, what, hint)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes)")
    with open(path, "rb") as file:
        head = file.read(4)
    is_zip = head == ZIP_MAGIC
    if not is_zip and not head.startswith(PICKLE_MAGIC):
        raise ValueError(f"{what} {path} is not a checkpoint: neither a torch.save zip file nor a pickle")
    if is_zip and not zipfile.is_zipfile(path):
        raise ValueError(f"{what} {path} is truncated or damaged: its zip directory is missing ({size} bytes)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it was not written with: not a fault
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            found = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
            detail = f" ({found.split('GLOBAL')[-1].strip().split()[0]})" if found else ""
            raise ValueError(f"{what} {path} refused: the file holds pickled code, not only weights{detail}") from None
        raise ValueError(f"{what} {path} is truncated or damaged: {_first_line(error)}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{what} {path} is truncated or damaged: {_first_line(error)}") from None


def count_non_finite(tensors) -> tuple[int, int]:
    """(NaN or infinite elements, all elements) of the floating tensors among ``tensors`` (weights: a run that
    diverged). One fused norm over all of them first: when it is finite so is every element, and the count (a pass
    per tensor) runs only when it is not (or overflowed)."""
    tensors = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    total = sum(t.numel() for t in tensors)
    norms = torch._foreach_norm(tensors) if tensors else []
    if not tensors or bool(torch.stack([n.float().to(norms[0].device) for n in norms]).isfinite().all()):
        return 0, total
    return sum(int((~torch.isfinite(t)).sum()) for t in tensors), total


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to ``path`` atomically; a full disk raises :class:`~halton.utils.files.DiskFull`."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as file:  # a Python file: a failed write is an OSError with its errno (torch's own
            torch.save(obj, file)      # file writer reports only "file write failed")

    return atomic_write(path, write)
