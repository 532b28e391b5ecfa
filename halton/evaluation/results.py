"""The results file of evaluation sweeps: one CSV row per (cell, evaluated step), updated atomically under a lock
so concurrent jobs (a SLURM sweep) never lose each other's rows and a crash never truncates the file."""

from __future__ import annotations

import csv
import fcntl
import io
import math
from contextlib import contextmanager
from pathlib import Path

from halton.utils.files import atomic_write

# The columns that identify a cell; re-running a cell whose rows are all present is skipped unless forced.
KEY_COLUMNS = ("experiment", "checkpoint", "scheduler", "scheduler_options", "steps", "cfg_weight", "cfg_interval",
               "temp_min",
               "temp_max", "temp_pow", "temp_warmup", "top_k", "schedule", "seed", "num_images", "extractor",
               "prompts", "eval_step")
# Key columns added later: rows of older files, which lack them, ran with these values.
KEY_DEFAULTS = {"temp_pow": 1.0, "temp_warmup": 0, "cfg_interval": ""}
# nfe_per_image: trunk forwards one image cost up to the row's eval_step (a CFG pair counts 2)
LEADING_COLUMNS = KEY_COLUMNS + ("tokens_fraction", "nfe_per_image")
TRAILING_COLUMNS = ("seconds", "images_per_s")


def _normalise(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def options_text(scheduler) -> str:
    """A scheduler's options as one results-file field: ``r_temp=4.5 guidance=ramp`` (empty without options)."""
    return " ".join(f"{key}={value}" for key, value in scheduler.options().items())


def interval_text(cfg_interval) -> str:
    """A CFG interval as one results-file field: ``0.1,0.3``; empty when guidance is always on (None)."""
    return "" if cfg_interval is None else ",".join(repr(float(t)) for t in cfg_interval)


def file_stem(label: str, steps: int, cfg_weight: float, seed: int, interval: str = "",
              schedule: str = "arccos") -> str:
    """The name of a run's images and diagnostics (sample.py and evaluate.py): the scheduler's label, a schedule
    other than arccos, steps, CFG weight, CFG interval (as :func:`interval_text` writes it) and seed:
    ``halton_exp_steps16_cfg1_interval0.1-0.3_seed0``."""
    interval = interval.replace(",", "-")
    return (f"{label}{'_' + schedule if schedule != 'arccos' else ''}_steps{steps}_cfg{float(cfg_weight):g}"
            f"{'_interval' + interval if interval else ''}_seed{seed}")


def row_key(row: dict) -> tuple[str, ...]:
    return tuple(_normalise(row.get(column) if row.get(column) not in (None, "") else KEY_DEFAULTS.get(column))
                 for column in KEY_COLUMNS)


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(self.path.suffix + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def has(self, keys: list[dict]) -> bool:
        present = {row_key(row) for row in self.rows()}
        return all(row_key(key) in present for key in keys)

    def write(self, new_rows: list[dict]) -> None:
        """Add rows, replacing any row with the same key; the file is rewritten atomically under the lock."""
        with self._locked():
            replaced = {row_key(row) for row in new_rows}
            rows = [row for row in self.rows() if row_key(row) not in replaced]
            rows += [{k: _normalise(v) for k, v in row.items()} for row in new_rows]
            metric_columns = sorted({c for row in rows for c in row} - set(LEADING_COLUMNS) - set(TRAILING_COLUMNS))
            columns = list(LEADING_COLUMNS) + metric_columns + list(TRAILING_COLUMNS)
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))
