"""One evaluation cell: generate class-balanced samples (split across ranks), extract features, compute metrics,
append the rows to the results file, and save a sample grid and the scheduler diagnostics beside it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from halton.evaluation.diagnostics import plot_diagnostics, step_diagnostics, summarise
from halton.evaluation.features import FeatureExtractor
from halton.evaluation.metrics import generative_metrics
from halton.sampling import Scheduler, sample
from halton.sampling.schedules import tokens_per_step
from halton.utils.files import atomic_write
from halton.utils.images import class_grid, save_png


def balanced_labels(num_images: int, num_classes: int) -> torch.Tensor:
    """Class ids cycling 0, 1, ..., C-1, 0, ...: every class equally often, and every batch balanced too."""
    if num_images < num_classes or num_images % num_classes:
        raise ValueError(f"num_images={num_images} must be a positive multiple of the {num_classes} classes "
                         f"(the same number of images per class)")
    return torch.arange(num_images) % num_classes


def batch_seed(seed: int, batch_index: int) -> int:
    """Each batch has its own generator, so the samples do not depend on how batches are split across ranks."""
    return seed * 1_000_003 + batch_index


@dataclass
class Generated:
    """What one rank generated, per global batch index."""

    features: dict[int, dict[int, dict[str, torch.Tensor]]] = field(default_factory=dict)  # batch -> step -> out
    diagnostics: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    preview: torch.Tensor | None = None  # images of the first batch, for the grid


@torch.no_grad()
def generate_and_extract(model, tokenizer, extractor: FeatureExtractor, scheduler: Scheduler, labels: torch.Tensor,
                         batch_size: int, seed: int, rank: int, world_size: int, eval_steps: list[int],
                         diagnostics: bool, device: torch.device, sampling: dict) -> Generated:
    """Generate this rank's share of the batches (every ``world_size``-th) and keep only their features."""
    out = Generated()
    batches = labels.split(batch_size)
    mine = range(rank, len(batches), world_size)
    final = sampling["steps"] - 1
    fill = tuple(s - 1 for s in eval_steps if s - 1 != final)
    for index in tqdm(mine, desc=f"generating ({scheduler.name})", disable=rank != 0, leave=False):
        generator = torch.Generator(device=device).manual_seed(batch_seed(seed, index))
        batch_labels = batches[index].to(device)
        result = sample(model, scheduler, batch_labels, generator=generator, return_history=diagnostics,
                        fill_steps=fill, **sampling)
        codes_by_step = {final: result.codes, **result.filled}
        out.features[index] = {}
        for step, codes in codes_by_step.items():
            images = tokenizer.decode(codes)
            extracted = extractor(images)
            out.features[index][step] = {k: v.cpu() for k, v in extracted.items()}
            if step == final and index == 0:
                out.preview = images.cpu()
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
    merged = Generated(preview=generated.preview)
    for features, diagnostics in parts:
        merged.features.update(features)
        merged.diagnostics.update(diagnostics)
    return merged


def concatenate(generated: Generated, step: int) -> dict[str, torch.Tensor]:
    ordered = [generated.features[i][step] for i in sorted(generated.features)]
    return {key: torch.cat([o[key] for o in ordered]) for key in ordered[0]}


def metric_rows(generated: Generated, reference, extractor: FeatureExtractor, cell: dict, steps: int,
                num_tokens: int, schedule: str, eval_steps: list[int]) -> list[dict]:
    cumulative = tokens_per_step(num_tokens, steps, schedule).cumsum(0).tolist()
    rows = []
    for step in sorted(set(eval_steps) | {steps}):
        extracted = concatenate(generated, step - 1)
        metrics = generative_metrics(extracted["features"], extracted["logits"], reference, extractor.metric_prefix)
        rows.append({**cell, "eval_step": step, "tokens_fraction": round(cumulative[step - 1] / num_tokens, 4),
                     **metrics})
    return rows


def save_artifacts(generated: Generated, out_dir: Path, label: str, cell: dict, num_classes: int,
                   per_class: int) -> dict[str, list[float]] | None:
    """A grid of the first samples (a row per class) and the diagnostics curves: JSON (the cell's settings and the
    curves, which the report averages over seeds) and a plot; files named after the scheduler's label and the
    cell's steps, CFG weight and seed."""
    stem = f"{label}_steps{cell['steps']}_cfg{cell['cfg_weight']:g}_seed{cell['seed']}"
    preview = generated.preview
    per_class = min(per_class, len(preview) // num_classes) if preview is not None else 0
    if per_class > 0:
        rows = min(num_classes, 10)
        # labels cycle through the classes, so sample j has class j % num_classes
        order = [c + k * num_classes for c in range(rows) for k in range(per_class)]
        save_png(class_grid(preview[order], rows, per_class, [str(c) for c in range(rows)]),
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
