"""The results file of evaluation sweeps: one CSV row per (cell, evaluated step), updated atomically under a lock
so concurrent jobs (a SLURM sweep) never lose each other's rows and a crash never truncates the file."""

from __future__ import annotations

import csv
import fcntl
import io
import math
from contextlib import contextmanager
from pathlib import Path

from halton.options.choices import EXTRACTORS
from halton.utils.files import atomic_write

# The columns that identify a cell; re-running a cell whose rows are all present is skipped unless forced. The
# model is identified by its weights (halton.models.loading.weights_digest), not by the checkpoint's path: a
# retrained last.ckpt is evaluated again, the same weights under another path are not.
KEY_COLUMNS = ("experiment", "weights", "scheduler", "scheduler_options", "steps", "cfg_weight", "cfg_interval",
               "temp_min", "temp_max", "temp_pow", "temp_warmup", "top_k", "schedule", "cache_refresh", "seed",
               "num_images", "extractor", "prompts", "eval_step")
# Key columns added later: rows of older files, which lack them, ran with these values (weights unknown: such a
# row never matches a new run's cell, which is evaluated again; cache_refresh "": no cache, exact).
KEY_DEFAULTS = {"temp_pow": 1.0, "temp_warmup": 0, "cfg_interval": "", "cache_refresh": ""}
# nfe_per_image: trunk forwards one image cost up to the row's eval_step (a CFG pair counts 2);
# position_layers_per_image: their cost in trunk positions x blocks (a cached local step runs only a few positions;
# empty in older files)
LEADING_COLUMNS = (("experiment", "checkpoint") + KEY_COLUMNS[1:]
                   + ("tokens_fraction", "nfe_per_image", "position_layers_per_image"))
TRAILING_COLUMNS = ("seconds", "images_per_s")
# Columns every results file has had since the first one: a CSV without them is another file.
REQUIRED_COLUMNS = ("experiment", "checkpoint", "scheduler", "steps", "cfg_weight", "seed", "num_images", "extractor",
                    "eval_step", "seconds", "images_per_s")
# A row names its cell at least by these (the report groups rows by them); the others are numbers where given.
REQUIRED_VALUES = ("scheduler", "steps", "eval_step")
INTEGER_COLUMNS = ("steps", "seed", "num_images", "eval_step", "temp_warmup", "nfe_per_image", "cache_refresh",
                   "position_layers_per_image")
NUMBER_COLUMNS = ("cfg_weight", "temp_min", "temp_max", "temp_pow", "tokens_fraction", "seconds", "images_per_s")


def metric_families(rows: list[dict]) -> list[tuple[str, ...]]:
    """The metric columns of each extractor whose distance (fid, dinov2_fd, ...) any of ``rows`` holds, in the
    order of :data:`~halton.options.choices.EXTRACTORS`: the Inception or digits numbers, then DINOv2's."""
    return [spec.metrics for spec in EXTRACTORS.values()
            if any(row.get(spec.metrics[0]) not in ("", None) for row in rows)]


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


def extractor_text(names) -> str:
    """The feature extractors of a cell as one results-file field: ``inception`` or ``inception+dinov2``."""
    return "+".join(names)


def file_stem(label: str, steps: int, cfg_weight: float, seed: int, interval: str = "",
              schedule: str = "arccos", cache_refresh: int | str | None = None) -> str:
    """The name of a run's images and diagnostics (sample.py and evaluate.py): the scheduler's label, a schedule
    other than arccos, steps, CFG weight, CFG interval (as :func:`interval_text` writes it), the cache refresh
    period when cached, and seed: ``halton_exp_steps16_cfg1_interval0.1-0.3_cache4_seed0``."""
    interval = interval.replace(",", "-")
    cache = "" if cache_refresh in (None, "") else f"_cache{cache_refresh}"
    return (f"{label}{'_' + schedule if schedule != 'arccos' else ''}_steps{steps}_cfg{float(cfg_weight):g}"
            f"{'_interval' + interval if interval else ''}{cache}_seed{seed}")


def row_key(row: dict) -> tuple[str, ...]:
    return tuple(_normalise(row.get(column) if row.get(column) not in (None, "") else KEY_DEFAULTS.get(column))
                 for column in KEY_COLUMNS)


class ResultsFileError(ValueError):
    """A results file that is damaged or not one: the one line names the file (and the line) and what is wrong."""


def _row_problem(row: dict[str, str]) -> str | None:
    """What is wrong with a row as read (every value a string), or None."""
    empty = [c for c in REQUIRED_VALUES if not row.get(c)]
    if empty:
        return f"empty {', '.join(empty)}"
    for column in (c for c in INTEGER_COLUMNS + NUMBER_COLUMNS if row.get(c)):
        try:
            int(row[column]) if column in INTEGER_COLUMNS else float(row[column])
        except ValueError:
            return f"{column}={row[column]!r} is not {'an integer' if column in INTEGER_COLUMNS else 'a number'}"
    if any("=" not in item for item in row.get("scheduler_options", "").split()):
        return f"scheduler_options={row['scheduler_options']!r} is not name=value pairs"
    metrics = [c for c in row if c not in LEADING_COLUMNS + TRAILING_COLUMNS]
    families = metric_families([row])
    missing = [m for family in families for m in family if m in row and not row[m]]
    if not families or missing:
        return f"metrics missing ({', '.join(missing) or 'no fid'})"
    for column in (c for c in metrics if row[c]):
        try:
            float(row[column])
        except ValueError:
            return f"{column}={row[column]!r} is not a number"
    return None


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results file as evaluate.py writes it, or a :class:`ResultsFileError`: a binary file, another
    CSV (a header without the results columns), a last row cut short (no line end), a row of the wrong length, with
    a required value empty or a metric missing. A file that does not exist, or is empty, has no rows."""
    if not path.exists():
        return []
    if not path.is_file():
        raise ResultsFileError(f"results file {path} is not a file")
    data = path.read_bytes()
    refuse = "; left as it is: repair it or move it away"
    if b"\0" in data:
        raise ResultsFileError(f"results file {path} is binary (a NUL byte at byte {data.index(0)}), not a CSV "
                               f"file{refuse}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ResultsFileError(f"results file {path} is not UTF-8 text (byte {error.start}), not a CSV "
                               f"file{refuse}") from None
    if not text:
        return []
    if not text.endswith("\n"):
        raise ResultsFileError(f"results file {path}, line {text.count(chr(10)) + 1}: the last row is cut short (no "
                               f"line end: an interrupted copy or write){refuse}")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing or len(set(header)) != len(header):
            why = f"no column {', '.join(missing[:3])}" if missing else "a column named twice"
            raise ResultsFileError(f"results file {path} is not a results file of evaluate.py (its header has {why})"
                                   f"{refuse}")
        rows = []
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                problem = f"{len(values)} values where the header names {len(header)} columns"
            else:
                rows.append(dict(zip(header, values)))
                problem = _row_problem(rows[-1])
            if problem:
                raise ResultsFileError(f"results file {path}, line {reader.line_num}: {problem}{refuse}")
    except csv.Error as error:
        raise ResultsFileError(f"results file {path}, line {reader.line_num}: {error}{refuse}") from None
    return rows


class ResultsFile:
    """A results file; a symbolic link (to a file shared by several run folders) is written through: its target
    gets the rows, under a lock beside the target, and keeps its permissions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _locked(self):
        target = self.path.resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(target.suffix + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield target
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def rows(self) -> list[dict[str, str]]:
        return read_rows(self.path)

    def has(self, keys: list[dict]) -> bool:
        present = {row_key(row) for row in self.rows()}
        return all(row_key(key) in present for key in keys)

    def write(self, new_rows: list[dict]) -> None:
        """Add rows, replacing any row with the same key; the file is rewritten atomically under the lock."""
        with self._locked() as target:
            replaced = {row_key(row) for row in new_rows}
            rows = [row for row in read_rows(target) if row_key(row) not in replaced]
            rows += [{k: _normalise(v) for k, v in row.items()} for row in new_rows]
            metric_columns = sorted({c for row in rows for c in row} - set(LEADING_COLUMNS) - set(TRAILING_COLUMNS))
            columns = list(LEADING_COLUMNS) + metric_columns + list(TRAILING_COLUMNS)
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
            mode = target.stat().st_mode & 0o7777 if target.exists() else None
            atomic_write(target, lambda tmp: Path(tmp).write_text(buffer.getvalue()))
            if mode is not None and target.stat().st_mode & 0o7777 != mode:
                target.chmod(mode)  # a shared file stays as its owner set it (e.g. group-writable)
