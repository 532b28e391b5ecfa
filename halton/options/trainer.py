"""The Lightning Trainer's options that the configs set (``trainer.*``, conf/trainer) and the rules of their values;
Lightning takes them as they are (train.py, and extraction's devices)."""

from __future__ import annotations

import re
from dataclasses import InitVar, dataclass
from typing import Any, Optional

from halton.options.choices import ACCELERATORS, TRAINER_PRECISIONS
from halton.options.rules import Invalid, choice, integer, key, number, under
from halton.options.training import TRAIN_METRICS


def check_devices(devices: Any) -> Any:
    """Lightning's ``devices``: auto, -1 (all), a count, a list of indices or "0,1"."""
    if devices in ("auto", -1) or (isinstance(devices, str) and re.fullmatch(r"\d+(,\d*)*", devices)):
        return devices
    for value in devices if isinstance(devices, list) else [devices]:
        integer("devices", value, 0 if isinstance(devices, list) else 1)
    return devices


@dataclass(frozen=True)
class TrainerOptions:
    """The Trainer's options train.py's values reach (conf/trainer/default.yaml); ``tpu``: whether the run may
    ask for TPUs (extraction does not)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_steps: int = 1000
    max_epochs: int = -1
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = 1
    log_every_n_steps: int = 10
    tpu: InitVar[bool] = True

    def __post_init__(self, tpu: bool) -> None:
        integer("max_steps", self.max_steps, 1)
        integer("max_epochs", self.max_epochs, -1)
        choice("accelerator", self.accelerator, ACCELERATORS + (("tpu",) if tpu else ()))
        check_devices(self.devices)
        integer("num_nodes", self.num_nodes, 1)
        if str(self.precision) not in TRAINER_PRECISIONS:
            raise Invalid(f"{key('precision')}={str(self.precision)!r} is not a precision; allowed: "
                          f"{', '.join(TRAINER_PRECISIONS)}")
        number("gradient_clip_val", self.gradient_clip_val, low=0, optional=True)
        integer("accumulate_grad_batches", self.accumulate_grad_batches, 1)
        integer("check_val_every_n_epoch", self.check_val_every_n_epoch, 1, optional=True)
        if isinstance(self.val_check_interval, float):
            number("val_check_interval", self.val_check_interval, above=0, high=1)
        else:
            integer("val_check_interval", self.val_check_interval, 1, optional=True)
        integer("log_every_n_steps", self.log_every_n_steps, 1)


def check_callbacks(callbacks: dict | None) -> None:
    """The values of the training callbacks a config has (``callbacks.*``, conf/callbacks)."""
    callbacks = callbacks or {}
    with under("callbacks."):
        if callbacks.get("ema") is not None:
            number("ema.decay", callbacks["ema"].get("decay"), low=0, high=1)
        bar = callbacks.get("progress_bar")
        if bar is not None:
            integer("progress_bar.refresh_rate", bar.get("refresh_rate"), 0, note=" (0 hides the bar)")
            shown = bar.get("train_metrics")
            for name in shown if isinstance(shown, list) else [shown]:
                if name not in TRAIN_METRICS:
                    raise Invalid(f"{key('progress_bar.train_metrics')}: {name!r} is not logged in training; allowed: "
                                  f"a list of {', '.join(TRAIN_METRICS)}")
        if callbacks.get("throughput") is not None:
            number("throughput.peak_tflops", callbacks["throughput"].get("peak_tflops"), above=0, optional=True)
        if callbacks.get("model_checkpoint") is not None:
            integer("model_checkpoint.every_n_train_steps", callbacks["model_checkpoint"].get("every_n_train_steps"), 1,
                    optional=True)
