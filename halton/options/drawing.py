"""The options of sample.py and the app beside the sampling options: the device and precision they draw with, the
samples per class or prompt, sample.py's extra images, and where the app serves its page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from halton.options.choices import PRECISIONS
from halton.options.rules import Invalid, boolean, choice, integer, key, number

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(device: Any) -> str:
    """A torch device name, or auto (a GPU when there is one)."""
    if not DEVICE.fullmatch(str(device)):
        raise Invalid(f"{key('device')}={str(device)!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
    return str(device)


@dataclass(frozen=True)
class DrawOptions:
    """sample.py's and the app's: ``per_class`` samples per class or prompt on ``device`` with ``precision``;
    sample.py's step-by-step image (``progression``, of ``progression_samples`` rows), digit accuracy, and whether
    an image replaces an earlier one of the same name (``overwrite``; otherwise a free name ``<name>_<n>.png``)."""

    device: str = "auto"
    precision: str = "auto"
    per_class: int = 8
    progression: bool = False
    progression_samples: int = 4
    report_accuracy: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        choice("precision", self.precision, PRECISIONS)
        integer("per_class", self.per_class, 1)
        check_device(self.device)
        boolean("progression", self.progression)
        integer("progression_samples", self.progression_samples, 1)
        boolean("report_accuracy", self.report_accuracy)
        boolean("overwrite", self.overwrite)


@dataclass(frozen=True)
class ServeOptions:
    """Where the app serves its page: ``host``, ``port`` (0 or None: a free one), a public Gradio link (``share``);
    the largest upload (``max_upload_mb``, MiB) and ``auth``, a file of ``user:password`` lines that the page asks
    for (None: no login)."""

    host: str = "127.0.0.1"
    port: Optional[int] = 7860
    share: bool = False
    max_upload_mb: float = 8.0
    auth: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise Invalid(f"{key('host')}={self.host!r} is not a host name; allowed: e.g. 127.0.0.1 (this machine), "
                          "0.0.0.0 (every interface)")
        integer("port", self.port, 0, 65535, optional=True, note=" (0 or null: a free port)")
        boolean("share", self.share)
        number("max_upload_mb", self.max_upload_mb, above=0, high=1024, note=" (MiB)")
        if self.auth is not None and (not isinstance(self.auth, str) or not self.auth.strip()):
            raise Invalid(f"{key('auth')}={self.auth!r} is not a file name; allowed: null (no login) or a file of "
                          "user:password lines")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
