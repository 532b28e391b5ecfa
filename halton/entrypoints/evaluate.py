"""Evaluate a checkpoint with one scheduler and step count: FID, IS, precision and recall of class-balanced
samples (of a text model: samples of COCO captions or other prompts, with their CLIP score), and FD-DINOv2 of the
same samples with extractor=[inception,dinov2], appended to a results file. Sweeps: python evaluate.py -m
scheduler=halton,confidence,random steps=4,8,16,32 (see conf/evaluate.yaml); tables and plots:
python -m halton.evaluation.report RESULTS."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from halton.build import build_from_config
from halton.cli import CONFIG_DIR, entry_point, resolve_autocast, run
from halton.options import SamplingOptions
from halton.options.evaluation import EvaluationOptions, PromptSetOptions, ReferenceOptions
from halton.options.rules import from_config, under

log = logging.getLogger("halton.evaluate")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@entry_point
def main(cfg: DictConfig) -> None:
    import torch
    from lightning.fabric import Fabric

    from halton.evaluation.features import build_extractors
    from halton.evaluation.prompts import evaluation_values
    from halton.evaluation.reference import reference_statistics
    from halton.evaluation.results import ResultsFile, extractor_text, interval_text, metric_families, options_text
    from halton.evaluation.runner import (
        gather,
        generate_and_extract,
        metric_rows,
        save_artifacts,
        timed,
    )
    from halton.models.loading import weights_digest
    from halton.pipeline import Pipeline
    from halton.sampling.schedules import schedule_label

    built = build_from_config(cfg)  # the scheduler and condition kind: the model loads once the run is not done
    scheduler, kind = built.scheduler, built.kind
    options = SamplingOptions.from_config(cfg)
    run_options = from_config(EvaluationOptions, cfg, steps=options.steps)  # evaluation_values balances the classes
    with under("reference."):
        ref = from_config(ReferenceOptions, cfg.reference, extractors=run_options.extractors)
    with under("prompt_set."):
        prompt_set = from_config(PromptSetOptions, cfg.prompt_set)
    eval_steps = list(run_options.intermediate_steps)
    digests = Path(cfg.paths.data_dir) / "cache" / "weights_digests.json"
    cell = {"experiment": cfg.name, "checkpoint": str(cfg.checkpoint),
            "weights": weights_digest(cfg.checkpoint, digests), "scheduler": scheduler.name,
            "scheduler_options": options_text(scheduler), "steps": options.steps,
            "cfg_weight": float(options.cfg_weight), "cfg_interval": interval_text(options.cfg_interval),
            "temp_min": float(options.temp_min), "temp_max": float(options.temp_max),
            "temp_pow": float(options.temp_pow), "temp_warmup": options.temp_warmup, "top_k": options.top_k,
            "schedule": schedule_label(options.schedule, options.schedule_power, options.schedule_rate),
            "cache_refresh": options.cache_refresh, "seed": options.seed,
            "num_images": run_options.num_images, "extractor": extractor_text(run_options.extractors),
            "prompts": ""}
    values, cell["prompts"] = evaluation_values(kind, cfg.data.num_classes, run_options.num_images, prompt_set)
    results = ResultsFile(run_options.results)
    wanted = [{**cell, "eval_step": s} for s in sorted(set(eval_steps) | {cfg.steps})]
    if results.has(wanted) and not run_options.force:  # read first: a damaged results file is refused before the work
        log.info(f"skipping {scheduler.label()}, {cfg.steps} steps: already in {results.path} (force=true recomputes)")
        return

    fabric = Fabric(accelerator=run_options.accelerator, devices=run_options.devices, num_nodes=run_options.num_nodes,
                    strategy="ddp" if run_options.devices != 1 or run_options.num_nodes > 1 else "auto")
    fabric.launch()
    device = fabric.device
    autocast = resolve_autocast(run_options.precision, device)
    pipeline = Pipeline.from_built(built.load(device), device)
    datamodule, model, tokenizer = built.data, pipeline.model, pipeline.tokenizer
    extractors = {name: extractor.to(device).eval()
                  for name, extractor in build_extractors(run_options.extractors, cfg).items()}
    scorers = {}
    if kind.prompts(values) is not None and cfg.clip_model:  # 100 * cos(image, prompt) of the generated images
        from halton.evaluation.clip import CLIPScorer

        clip = CLIPScorer(cfg.clip_model).to(device)
        scorers["clip_score"] = lambda images, asked: clip.scores(images, kind.prompts(asked))
    if hasattr(datamodule, "recognised"):  # the digits: is the requested digit the one drawn?
        scorers["adherence"] = datamodule.recognised
    probe = tokenizer.decode(torch.zeros(1, *model.grid, dtype=torch.long, device=device))
    image_size = tuple(probe.shape[-2:])
    references = {}
    if fabric.global_rank == 0:  # before generating: a bad reference fails fast
        coco = ref.kind == "coco"  # the images of exactly the captions drawn
        for name, extractor in extractors.items():  # each extractor against statistics of its own features
            references[name] = reference_statistics(ref.kind, ref.path, extractor, image_size,
                                                    Path(cfg.paths.data_dir) / "cache", device,
                                                    run_options.num_images if coco else ref.max_images,
                                                    captions=ref.captions, seed=prompt_set.seed)
            references[name].check_features(extractor(probe)["features"].shape[1], name)
    generated, seconds = timed(generate_and_extract, pipeline, extractors, values, run_options.batch_size, cfg.seed,
                               fabric.global_rank, fabric.world_size, eval_steps, run_options.diagnostics, autocast,
                               scorers)
    generated = gather(generated, fabric.world_size)
    if fabric.global_rank != 0:
        return
    cell.update(seconds=round(seconds, 2), images_per_s=round(run_options.num_images / seconds, 2))
    counts = scheduler.counts(model.num_tokens, options.steps, options.schedule, options.schedule_power,
                              options.schedule_rate)
    rows = metric_rows(generated, references, cell, counts, eval_steps)
    save_artifacts(generated, results.path.parent, scheduler.label(), cell, kind, run_options.grid_per_class)
    results.write(rows)
    for row in rows:
        metrics = [c for family in metric_families([row]) for c in family] + list(scorers)
        shown = {k: round(row[k], 4) if isinstance(row[k], float) else row[k] for k in metrics}
        log.info(f"{scheduler.label()}, step {row['eval_step']}/{cfg.steps}: {shown}, "
                 f"{row['nfe_per_image']} network evaluations per image"
                 + (f" ({row['position_layers_per_image']} trunk position-layers)"
                    if row["position_layers_per_image"] else ""))
    log.info(f"results: {results.path} ({run_options.num_images / seconds:.1f} images/s)")


def cli() -> None:
    """``python evaluate.py ARGS`` and the console script ``halton-evaluate ARGS``."""
    run(main, "evaluate")


if __name__ == "__main__":
    cli()
