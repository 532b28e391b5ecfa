"""One evaluation cell: generate samples for the requested conditions (class-balanced labels, or prompts; split
across ranks), extract the features of every extractor from the same images (and CLIP scores for prompts), compute
each extractor's metrics against its own reference, append the rows to the results file, and save a sample grid and
the scheduler diagnostics beside it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from halton.evaluation.diagnostics import plot_diagnostics, step_diagnostics, summarise
from halton.evaluation.features import FeatureExtractor
from halton.evaluation.metrics import generative_metrics
from halton.evaluation.results import file_stem
from halton.conditions import ConditionKind
from halton.options.choices import EXTRACTORS
from halton.utils.files import atomic_write
from halton.utils.images import class_grid, save_png
from halton.utils.progress import progress as progress_bar

if TYPE_CHECKING:
    from halton.pipeline import Pipeline


def batch_seed(seed: int, batch_index: int) -> int:
    """Each batch has its own generator, so the samples do not depend on how batches are split across ranks."""
    return seed * 1_000_003 + batch_index


@dataclass
class Generated:
    """What one rank generated, per global batch index."""

    # batch -> step -> {"EXTRACTOR/features" (and "EXTRACTOR/logits" of a classifier), each scorer's name: [B, ...]}
    features: dict[int, dict[int, dict[str, torch.Tensor]]] = field(default_factory=dict)
    diagnostics: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    preview: torch.Tensor | None = None  # images of the first batch, for the grid
    preview_values: list = field(default_factory=list)  # their conditions (class ids, prompts)
    nfe_per_step: list[int] = field(default_factory=list)  # trunk forwards per image at each step (every batch alike)
    position_layers_per_step: list[int] = field(default_factory=list)  # their cost, trunk positions x blocks


@torch.no_grad()
def generate_and_extract(pipeline: Pipeline, extractors: dict[str, FeatureExtractor], values: list, batch_size: int,
                         seed: int, rank: int, world_size: int, eval_steps: list[int], diagnostics: bool,
                         autocast_dtype: torch.dtype | None = None,
                         scorers: dict[str, Callable] | None = None) -> Generated:
    """Generate this rank's share of the batches (every ``world_size``-th) of ``values`` (conditions of the
    pipeline's kind; its scheduler and sampling options) and keep only the outputs of every extractor (by name: FID
    and FD-DINOv2 of the same samples), and each image's score by every ``scorers[name](images, values)`` (the CLIP
    score of a text model, the digits' adherence), averaged over images into the metric ``name``."""
    out = Generated()
    batches = [values[i:i + batch_size] for i in range(0, len(values), batch_size)]
    mine = range(rank, len(batches), world_size)
    final = pipeline.sampling.steps - 1
    fill = tuple(s - 1 for s in eval_steps if s - 1 != final)
    device = pipeline.device
    for index in progress_bar(mine, desc=f"generating ({pipeline.scheduler.name})", disable=rank != 0, leave=False):
        generator = torch.Generator(device=device).manual_seed(batch_seed(seed, index))
        condition = pipeline.condition.make(batches[index], device)
        result = pipeline.draw(condition, generator=generator, return_history=diagnostics, fill_steps=fill,
                               autocast_dtype=autocast_dtype)
        out.nfe_per_step, out.position_layers_per_step = result.nfe_per_step, result.position_layers_per_step
        codes_by_step = {final: result.codes, **result.filled}
        out.features[index] = {}
        for step, codes in codes_by_step.items():
            images = pipeline.tokenizer.decode(codes)
            extracted = {f"{name}/{output}": value for name, extractor in extractors.items()
                         for output, value in extractor(images).items()}
            for name, score in (scorers or {}).items():
                extracted[name] = score(images, batches[index])
            out.features[index][step] = {k: v.cpu() for k, v in extracted.items()}
            if step == final and index == 0:
                out.preview, out.preview_values = images.cpu(), list(batches[index])
        if diagnostics:
            out.diagnostics[index] = step_diagnostics(result)
    return out


def gather(generated: Generated, world_size: int) -> Generated:
    """Collect every rank's batches on rank 0 (torch.distributed's object gather)."""
    if world_size == 1:
        return generated
    parts = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object((generated.features, generated.diagnostics), parts, dst=0)
    if dist.get_rank() != 0:
        return generated
    merged = Generated(preview=generated.preview, preview_values=generated.preview_values,
                       nfe_per_step=generated.nfe_per_step,
                       position_layers_per_step=generated.position_layers_per_step)
    for features, diagnostics in parts:
        merged.features.update(features)
        merged.diagnostics.update(diagnostics)
    return merged


def concatenate(generated: Generated, step: int) -> dict[str, torch.Tensor]:
    ordered = [generated.features[i][step] for i in sorted(generated.features)]
    return {key: torch.cat([o[key] for o in ordered]) for key in ordered[0]}


def metric_rows(generated: Generated, references: dict, cell: dict, counts: list[int],
                eval_steps: list[int]) -> list[dict]:
    """One row per evaluated step, with the metrics of every extractor against its own reference statistics
    (``references``: ReferenceStats by extractor name); ``counts``: the tokens each step unmasked (the scheduler's
    own counts)."""
    cumulative = torch.tensor(counts).cumsum(0).tolist()
    num_tokens = cumulative[-1]
    rows = []
    for step in sorted(set(eval_steps) | {len(counts)}):
        extracted = concatenate(generated, step - 1)
        metrics = {}
        for name, reference in references.items():
            spec = EXTRACTORS[name]
            metrics.update(generative_metrics(extracted[f"{name}/features"], extracted.get(f"{name}/logits"),
                                              reference, spec.prefix, spec.distance))
        for name in (k for k in extracted if "/" not in k):  # the scorers' means over images
            metrics[name] = float(extracted[name].double().mean())
        # the partial images after an intermediate step cost the forwards up to it (filling them is head-only)
        rows.append({**cell, "eval_step": step, "tokens_fraction": round(cumulative[step - 1] / num_tokens, 4),
                     "nfe_per_image": sum(generated.nfe_per_step[:step]),
                     "position_layers_per_image": sum(generated.position_layers_per_step[:step]) or None, **metrics})
    return rows


def save_artifacts(generated: Generated, out_dir: Path, label: str, cell: dict, kind: ConditionKind,
                   per_row: int) -> dict[str, list[float]] | None:
    """A grid of the first samples (a row per class or prompt, at most 10) and the diagnostics curves: JSON (the
    cell's settings and the curves, which the report averages over seeds) and a plot; files named after the
    scheduler's label and the cell's schedule, steps, CFG weight, CFG interval and seed (:func:`file_stem`)."""
    # a CFG interval ("0.1,0.3") gets its own files, beside the always-guided ones
    stem = file_stem(label, cell["steps"], cell["cfg_weight"], cell["seed"], cell.get("cfg_interval") or "",
                     cell.get("schedule") or "arccos", cell.get("cache_refresh"))
    if generated.preview is not None and per_row > 0:
        rows: dict = {}
        for position, value in enumerate(generated.preview_values):
            if value in rows or len(rows) < 10:
                rows.setdefault(value, []).append(position)
        keys = sorted(rows) if all(isinstance(v, int) for v in rows) else list(rows)
        cols = min(per_row, max(len(p) for p in rows.values()))
        order = [rows[v][k] if k < len(rows[v]) else None for v in keys for k in range(cols)]
        blank = torch.ones_like(generated.preview[:1])  # white where a prompt has fewer samples
        images = torch.cat([generated.preview[i:i + 1] if i is not None else blank for i in order])
        save_png(class_grid(images, len(keys), cols, [kind.label(v) for v in keys]),
                 out_dir / "grids" / f"{stem}.png")
    if not generated.diagnostics:
        return None
    curves = summarise([generated.diagnostics[i] for i in sorted(generated.diagnostics)])
    folder = out_dir / "diagnostics"
    text = json.dumps({"cell": cell, "curves": curves})
    atomic_write(folder / f"{stem}.json", lambda tmp: Path(tmp).write_text(text))
    plot_diagnostics({label: curves}, folder / f"{stem}.png")
    return curves


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start
