"""Draw a labelled sample grid, a row per class or per prompt: python sample.py experiment=digits scheduler=halton
steps=16, or for a text model prompt="a red fox in the snow" (several: prompts=[...] or prompt_file=PATH; see
conf/sample.yaml and conf/sampling/default.yaml). progression=true also writes the step-by-step image (paper Fig. 3).

Editing: edit.image=PATH with one of edit.box=[x0,y0,x1,y1], edit.mask=PATH (white = regenerate) or
edit.outpaint=[top,right,bottom,left] regenerates that region for every class or prompt and writes a
before / masked / after grid (see halton/sampling/editing.py). Several images, each with its own region:
edit.images=[A,B] with edit.boxes=[[x0,y0,x1,y1],[...]] or edit.masks=[MA,MB]: a row per image and class or prompt."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from halton.build import build_from_config
from halton.cli import CONFIG_DIR, entry_point, read_prompts, resolve_autocast, resolve_device, run
from halton.options.drawing import DrawOptions
from halton.options.rules import from_config

log = logging.getLogger("halton.sample")


def plain(value):
    """A config value as plain Python (lists from the command line arrive as ListConfig)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
@entry_point
def main(cfg: DictConfig) -> None:
    from halton.evaluation.results import file_stem, interval_text
    from halton.pipeline import Pipeline
    from halton.sampling.editing import (
        edit_grid,
        paint_tokens,
        prepare_edit,
        prepare_edits,
    )
    from halton.sampling.schedules import schedule_label
    from halton.utils.files import unused_path
    from halton.utils.images import class_grid, progression_grid, save_png

    draw = from_config(DrawOptions, cfg)
    device = resolve_device(draw.device)
    autocast = resolve_autocast(draw.precision, device)
    built = build_from_config(cfg, device)  # the data module too: the digits' classifier reads the samples back
    pipe = Pipeline.from_built(built, device)
    scheduler, options, net, kind = pipe.scheduler, pipe.sampling, pipe.model, pipe.condition
    classes = None if cfg.classes is None else [cfg.classes] if isinstance(cfg.classes, int) else list(cfg.classes)
    prompts = read_prompts(cfg)
    kind.requested(net, classes, prompts)  # refused before an edit's image is read
    edit = None if cfg.edit.image is None else prepare_edit(  # validated: an image with exactly one region
        net, pipe.tokenizer, cfg.edit.image, box=plain(cfg.edit.box), mask=cfg.edit.mask,
        outpaint=plain(cfg.edit.outpaint), dilate=cfg.edit.dilate, device=device)
    if cfg.edit.get("images") is not None:  # validated: several images, one region each
        edit = prepare_edits(net, pipe.tokenizer, plain(cfg.edit.images), boxes=plain(cfg.edit.boxes),
                             masks=plain(cfg.edit.masks), dilate=cfg.edit.dilate, device=device)
    out = pipe(classes, prompts=prompts, per_condition=draw.per_class, edit=edit, paste_back=cfg.edit.composite,
               return_history=draw.progression, autocast_dtype=autocast, progress=True)
    log.info(f"{out.nfe_per_image} network evaluations per image"
             + (f", {out.position_layers_per_image} trunk position-layers" if out.position_layers_per_image else ""))
    values, images = out.values, out.pixels
    images_edited = 1 if edit is None else len(edit.init_codes)
    stem = file_stem(scheduler.label(), options.steps, options.cfg_weight, options.seed,
                     interval_text(options.cfg_interval),
                     schedule_label(options.schedule, options.schedule_power, options.schedule_rate),
                     options.cache_refresh)
    out_dir = Path(cfg.out_dir)
    labels = [kind.label(v) for v in values] * images_edited

    def written(grid, name: str) -> Path:
        path = save_png(grid, unused_path(out_dir / name, draw.overwrite))
        kept = f" ({name} is there already and is kept; overwrite=true replaces it)" if path.name != name else ""
        log.info(f"wrote {path}{kept}")
        return path

    if edit is None:
        written(class_grid(images, len(values), draw.per_class, labels), f"{stem}.png")
    else:
        written(edit_grid(edit, images, labels, draw.per_class), f"{stem}_edit-{edit.region}.png")
    if draw.report_accuracy and edit is None and hasattr(built.data, "recognition_accuracy"):
        asked = [value for value in values for _ in range(draw.per_class)]
        accuracy = built.data.recognition_accuracy(images, asked)
        log.info(f"{scheduler.label()}, {cfg.steps} steps: a digit classifier reads the requested digit in "
                 f"{100 * accuracy:.1f}% of {len(asked)} samples")
    if draw.progression:
        first = [r * draw.per_class for r in range(min(draw.progression_samples, len(values)))]
        painted = [paint_tokens(pipe.decode(codes[first]), codes[first] == net.mask_id)
                   for codes in out.codes_per_step]
        labels_per_step = [f"{i + 1}" for i in range(cfg.steps)]
        written(progression_grid(painted, labels_per_step), f"{stem}_progression.png")


def cli() -> None:
    """``python sample.py ARGS`` and the console script ``halton-sample ARGS``."""
    run(main, "sample")


if __name__ == "__main__":
    cli()
