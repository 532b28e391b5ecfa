"""Turn a results file into a markdown table and plots: FID versus steps with one line per scheduler (paper Fig. 5),
and the scheduler diagnostics of one step count (paper Fig. 4).

    python -m halton.evaluation.report runs/digits/eval/results.csv [--out DIR] [--metric digits_fid]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from halton.evaluation.diagnostics import plot_diagnostics
from halton.evaluation.results import ResultsFile
from halton.utils.checkpoint import atomic_write

METRICS = ("fid", "is", "precision", "recall")


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def metric_prefix(rows: list[dict]) -> str:
    prefixes = {c[: -len("fid")] for row in rows for c, v in row.items() if c.endswith("fid") and v not in ("", None)}
    if len(prefixes) > 1:
        raise ValueError(f"results mix extractors ({', '.join(sorted(p or 'inception' for p in prefixes))}); "
                         "report them separately")
    return prefixes.pop() if prefixes else ""


def markdown_table(rows: list[dict], prefix: str) -> str:
    final = sorted((r for r in rows if r["eval_step"] == r["steps"]),
                   key=lambda r: (r["scheduler"], int(r["steps"]), _float(r["cfg_weight"])))
    columns = [prefix + m for m in METRICS]
    header = ["scheduler", "steps", "cfg", "images", *columns, "images/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in final:
        values = [f"{_float(r.get(c)):.3f}" for c in columns]
        lines.append("| " + " | ".join([r["scheduler"], r["steps"], r["cfg_weight"], r["num_images"], *values,
                                        r.get("images_per_s", "")]) + " |")
    partial = sorted((r for r in rows if r["eval_step"] != r["steps"]),
                     key=lambda r: (r["scheduler"], int(r["steps"]), int(r["eval_step"])))
    if partial:
        lines += ["", "Intermediate steps (partial images: masked tokens drawn from that step's predictions)", "",
                  "| scheduler | step | tokens | " + " | ".join(columns) + " |", "|" + " --- |" * (3 + len(columns))]
        for r in partial:
            values = [f"{_float(r.get(c)):.3f}" for c in columns]
            lines.append(f"| {r['scheduler']} | {r['eval_step']}/{r['steps']} | "
                         f"{100 * _float(r['tokens_fraction']):.0f}% | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def plot_metric_vs_steps(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = defaultdict(list)
    for r in rows:
        if r["eval_step"] == r["steps"] and not math.isnan(_float(r.get(metric))):
            lines[(r["scheduler"], r["cfg_weight"])].append((int(r["steps"]), _float(r[metric])))
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for (scheduler, cfg_weight), points in sorted(lines.items()):
        steps, values = zip(*sorted(points))
        label = scheduler if len({k[1] for k in lines}) == 1 else f"{scheduler} (cfg {cfg_weight})"
        axis.plot(steps, values, marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("sampling steps")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and the plots")
    parser.add_argument("--metric", default=None, help="metric to plot against steps (default: the FID column)")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        raise SystemExit(f"error: results file not found: {args.results}")
    rows = ResultsFile(args.results).rows()
    if not rows:
        raise SystemExit(f"error: {args.results} has no rows")
    out = args.out or args.results.parent
    prefix = metric_prefix(rows)
    metric = args.metric or prefix + "fid"
    if metric not in rows[0]:
        allowed = ", ".join(c for c in rows[0] if c.endswith(METRICS))
        raise SystemExit(f"error: unknown metric {metric!r}; allowed: {allowed}")
    table = markdown_table(rows, prefix)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(table))
    plot_metric_vs_steps(rows, metric, out / f"{metric}_vs_steps.png")
    diagnostics = sorted((args.results.parent / "diagnostics").glob("*.json"))
    by_steps = defaultdict(dict)
    for path in diagnostics:  # <scheduler>_steps<S>_cfg<w>_seed<s>.json
        scheduler, rest = path.stem.split("_steps", 1)
        by_steps[int(rest.split("_", 1)[0])][scheduler] = json.loads(path.read_text())
    for steps, curves in by_steps.items():
        plot_diagnostics(curves, out / f"diagnostics_steps{steps}.png")
    print(table)
    print(f"wrote {out / 'report.md'}, {out / f'{metric}_vs_steps.png'}"
          + (f" and diagnostics plots for {sorted(by_steps)} steps" if by_steps else ""))


if __name__ == "__main__":
    main()
