"""Turn a results file into a report: report.md with tables (mean and spread over seeds) and the pictures it links:
the metric against steps (paper Fig. 5), against the CFG weight, and the scheduler diagnostics (paper Fig. 4).

    python -m halton.evaluation.report runs/digits/eval/results.csv [--out DIR] [--metric digits_fid]

Every feature space in the file has its columns (fid, is, precision, recall; dinov2_fd, dinov2_precision,
dinov2_recall beside them when the evaluation ran extractor=[inception,dinov2]) and its distance plotted. Rows that
differ only by their seed are one setting: the tables give the mean and standard deviation over the
seeds ("6.07 ± 0.21"), the plots the mean with the spread as error bars. A scheduler is labelled by its name and the
options that take several values in the file (e.g. ``confidence guidance=constant``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from halton.evaluation.diagnostics import NAMES, plot_diagnostics
from halton.evaluation.results import ResultsFile, metric_families
from halton.options.choices import EXTRACTORS
from halton.utils.files import atomic_write

# text models' CLIP score; the share of digits read as requested; network evaluations per image (CFG pairs count 2)
# and their trunk cost in position-layers (what context caching saves)
EXTRA_METRICS = ("clip_score", "adherence", "nfe_per_image", "position_layers_per_image")
# the Frechet distance column of every extractor (fid, digits_fid, dinov2_fd): lower is better
DISTANCES = {spec.metrics[0] for spec in EXTRACTORS.values()}


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def scheduler_labels(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(scheduler, scheduler_options) -> label: the name, plus the options that vary among that scheduler's rows."""
    variants = defaultdict(set)
    for row in rows:
        variants[row["scheduler"]].add(row.get("scheduler_options", ""))
    labels = {}
    for name, option_sets in variants.items():
        parsed = {text: dict(item.split("=", 1) for item in text.split()) for text in option_sets}
        varying = sorted({k for options in parsed.values() for k in options
                          if len({o.get(k) for o in parsed.values()}) > 1})
        for text, options in parsed.items():
            labels[name, text] = " ".join([name, *(f"{k}={options.get(k, '')}" for k in varying)])
    return labels


def label_of(row: dict, labels: dict) -> str:
    """The scheduler's label, then the prompts of a text model's cell (``digits:unseen``), the CFG interval, a
    schedule other than the default (``exp-rate=3``) and a cached run's refresh period (``cache=4``; rows without
    one, older files' included, are the exact sampler) when there are any."""
    prompts, interval = row.get("prompts") or "", row.get("cfg_interval") or ""
    schedule, cache = row.get("schedule") or "arccos", row.get("cache_refresh")
    return (labels[row["scheduler"], row.get("scheduler_options", "")] + (f" [{prompts}]" if prompts else "")
            + (f" cfg in ({interval.replace(',', ', ')}]" if interval else "")
            + (f" {schedule}" if schedule != "arccos" else "")
            + (f" cache={cache}" if cache not in (None, "") else ""))


class Settings:
    """The rows of one setting (every key but the seed), with their metrics averaged over seeds."""

    def __init__(self, label: str, steps: int, cfg_weight: float, eval_step: int, rows: list[dict]):
        self.label, self.steps, self.cfg_weight, self.eval_step, self.rows = label, steps, cfg_weight, eval_step, rows

    def values(self, column: str) -> list[float]:
        return [v for v in (_float(r.get(column)) for r in self.rows) if not math.isnan(v)]

    def mean(self, column: str) -> float:
        values = self.values(column)
        return statistics.fmean(values) if values else math.nan

    def spread(self, column: str) -> float:
        values = self.values(column)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def text(self, column: str, digits: int = 3) -> str:
        values = self.values(column)
        if not values:
            return "nan"
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{self.mean(column):.{digits}f} ± {self.spread(column):.{digits}f}"


def settings_of(rows: list[dict]) -> list[Settings]:
    labels = scheduler_labels(rows)
    groups = defaultdict(list)
    for row in rows:
        key = (label_of(row, labels), int(row["steps"]), _float(row["cfg_weight"]), int(row["eval_step"]))
        groups[key].append(row)
    return [Settings(*key, group) for key, group in sorted(groups.items())]


def markdown_table(rows: list[dict], families: list[tuple[str, ...]]) -> str:
    """The final samples of every setting, with the metric columns of ``families``; then, with intermediate steps,
    the partial images."""
    settings = settings_of(rows)
    columns = [column for family in families for column in family]
    columns += [c for c in EXTRA_METRICS if any(r.get(c) not in ("", None) for r in rows)]
    header = ["scheduler", "steps", "cfg", "seeds", "images", *columns, "images/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for s in (s for s in settings if s.eval_step == s.steps):
        cells = [s.label, str(s.steps), f"{s.cfg_weight:g}", str(len(s.rows)), s.rows[0]["num_images"],
                 *(s.text(c) for c in columns), f"{s.mean('images_per_s'):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    partial = [s for s in settings if s.eval_step != s.steps]
    if partial:
        lines += ["", "Intermediate steps (partial images: masked tokens drawn from that step's predictions)", "",
                  "| scheduler | cfg | step | tokens | " + " | ".join(columns) + " |",
                  "|" + " --- |" * (4 + len(columns))]
        for s in partial:
            fraction = 100 * _float(s.rows[0]["tokens_fraction"])
            lines.append(f"| {s.label} | {s.cfg_weight:g} | {s.eval_step}/{s.steps} | {fraction:.0f}% | "
                         + " | ".join(s.text(c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def cfg_table(rows: list[dict], metric: str) -> str:
    """``metric`` per scheduler and steps (rows) and CFG weight (columns), the best weight of each row in bold;
    empty when the file holds one CFG weight."""
    final = [s for s in settings_of(rows) if s.eval_step == s.steps]
    weights = sorted({s.cfg_weight for s in final})
    if len(weights) < 2:
        return ""
    lower_is_better = metric in DISTANCES  # IS, precision, recall: higher is better
    by_row = defaultdict(dict)
    for s in final:
        by_row[s.label, s.steps][s.cfg_weight] = s
    lines = ["| scheduler | steps | " + " | ".join(f"cfg {w:g}" for w in weights) + " | best cfg |",
             "|" + " --- |" * (len(weights) + 3)]
    for (label, steps), cells in sorted(by_row.items(), key=lambda item: (item[0][1], item[0][0])):
        means = {w: s.mean(metric) for w, s in cells.items() if not math.isnan(s.mean(metric))}
        best = (min if lower_is_better else max)(means, key=means.get) if means else None
        texts = [(f"**{cells[w].text(metric)}**" if w == best else cells[w].text(metric)) if w in cells else ""
                 for w in weights]
        lines.append(f"| {label} | {steps} | " + " | ".join(texts) + f" | {'' if best is None else f'{best:g}'} |")
    return "\n".join(lines) + "\n"


def _plot(series: dict[str, list[tuple[float, float, float]]], xlabel: str, metric: str, path: Path,
          log_x: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.2))
    for label, points in sorted(series.items()):
        xs, means, spreads = zip(*sorted(points))
        axis.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=label)
    if log_x:
        axis.set_xscale("log", base=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def plot_metric_vs_steps(rows: list[dict], metric: str, path: Path) -> None:
    """A line per scheduler (and CFG weight when there are several): the metric against the sampling steps."""
    final = [s for s in settings_of(rows) if s.eval_step == s.steps and not math.isnan(s.mean(metric))]
    several = len({s.cfg_weight for s in final}) > 1
    series = defaultdict(list)
    for s in final:
        series[f"{s.label} (cfg {s.cfg_weight:g})" if several else s.label].append(
            (s.steps, s.mean(metric), s.spread(metric)))
    _plot(series, "sampling steps", metric, path, log_x=True)


def plot_metric_vs_cfg(rows: list[dict], metric: str, path: Path) -> None:
    """A line per scheduler and step count: the metric against the CFG weight."""
    final = [s for s in settings_of(rows) if s.eval_step == s.steps and not math.isnan(s.mean(metric))]
    series = defaultdict(list)
    for s in final:
        series[f"{s.label}, {s.steps} steps"].append((s.cfg_weight, s.mean(metric), s.spread(metric)))
    _plot(series, "CFG weight", metric, path, log_x=False)


def diagnostics_by_steps(folder: Path, rows: list[dict], cfg_weight: float | None) -> tuple[dict, float | None]:
    """{steps: {label: curves averaged over seeds}} of the diagnostics files at one CFG weight (default: the
    smallest one present), and that weight."""
    labels = scheduler_labels(rows)
    cells = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"diagnostics file {path} is not JSON ({error}); move it away") from None
        if "cell" in data and (data["cell"]["scheduler"], data["cell"].get("scheduler_options", "")) in labels:
            cells.append(data)
    if not cells:
        return {}, None
    if cfg_weight is None:
        cfg_weight = min(float(c["cell"]["cfg_weight"]) for c in cells)
    grouped = defaultdict(list)
    for c in cells:
        if float(c["cell"]["cfg_weight"]) == cfg_weight:
            grouped[int(c["cell"]["steps"]), label_of(c["cell"], labels)].append(c["curves"])
    by_steps = defaultdict(dict)
    for (steps, label), curves in grouped.items():
        by_steps[steps][label] = {name: [statistics.fmean(v) if not any(math.isnan(x) for x in v) else math.nan
                                         for v in zip(*(c[name] for c in curves))] for name in NAMES}
    return dict(by_steps), cfg_weight


def main(argv: list[str] | None = None) -> None:
    """The command line: a results file or diagnostics file it cannot read, and a bad option, stop it with one
    line naming the file (and the line) and exit code 2."""
    from halton.cli import fail

    try:
        report(argv)
    except (ValueError, OSError) as error:
        fail(str(error).splitlines()[0] if str(error) else repr(error))


def report(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and the plots")
    parser.add_argument("--metric", default=None,
                        help="metric to plot (default: the distance of each feature space: fid, dinov2_fd, ...)")
    parser.add_argument("--diagnostics-cfg", type=float, default=None,
                        help="CFG weight of the cells whose diagnostics are plotted (default: the smallest)")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        raise FileNotFoundError(f"results file not found: {args.results}")
    rows = ResultsFile(args.results).rows()
    if not rows:
        raise ValueError(f"results file {args.results} has no rows")
    out = args.out or args.results.parent
    families = metric_families(rows)
    allowed = [c for family in families for c in family]
    if args.metric is not None and args.metric not in allowed:
        raise ValueError(f"unknown metric {args.metric!r}; allowed: {', '.join(allowed)}")
    metrics = [args.metric] if args.metric else [family[0] for family in families]  # fid beside dinov2_fd

    sections = [f"# Evaluation report\n\nFrom `{args.results}`: {len(rows)} rows. Mean ± standard deviation over "
                "the seeds of each setting.\n", markdown_table(rows, families)]
    pictures = []
    for metric in metrics:
        plot_metric_vs_steps(rows, metric, out / f"{metric}_vs_steps.png")
        pictures.append(f"![{metric} against the sampling steps]({metric}_vs_steps.png)")
    for metric in metrics:
        by_cfg = cfg_table(rows, metric)
        if by_cfg:
            sections += [f"## {metric} by CFG weight (best weight per row in bold)\n", by_cfg]
            plot_metric_vs_cfg(rows, metric, out / f"{metric}_vs_cfg.png")
            pictures.append(f"![{metric} against the CFG weight]({metric}_vs_cfg.png)")
    sections.append("\n".join(pictures) + "\n")
    curves, weight = diagnostics_by_steps(args.results.parent / "diagnostics", rows, args.diagnostics_cfg)
    if curves:
        sections.append(f"## Scheduler diagnostics (CFG {weight:g}, mean over seeds)\n")
        for steps, by_label in sorted(curves.items()):
            plot_diagnostics(by_label, out / f"diagnostics_steps{steps}.png")
            sections.append(f"![diagnostics at {steps} steps](diagnostics_steps{steps}.png)\n")
    report = "\n".join(sections)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(report))
    print(report)
    print(f"wrote {out / 'report.md'} and the pictures it links, in {out}")


if __name__ == "__main__":
    main()
