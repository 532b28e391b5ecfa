"""Draw a labelled sample grid, a row per class or per prompt: python sample.py experiment=digits scheduler=halton
steps=16, or for a text model prompt="a red fox in the snow" (several: prompts=[...] or prompt_file=PATH; see
conf/sample.yaml). progression=true also writes the step-by-step image (paper Fig. 3).

Editing: edit.image=PATH with one of edit.box=[x0,y0,x1,y1], edit.mask=PATH (white = regenerate) or
edit.outpaint=[top,right,bottom,left] regenerates that region for every class or prompt and writes a
before / masked / after grid (see halton/sampling/editing.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from halton.cli import condition_kind, entry_point, load_network, read_prompts, resolve_autocast, resolve_device, run

log = logging.getLogger("halton.sample")
EDIT_REGIONS = ("box", "mask", "outpaint")


def plain(value):
    """A config value as plain Python (lists from the command line arrive as ListConfig)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def prepare_edit(edit: DictConfig, tokenizer, net, device):
    """The edit's input image [1, C, H, W] (resized to cover the model's image size, center-cropped), the image the
    edit starts from (the same; for outpainting shifted away from the extended sides), its codes with the region
    set to the mask id [1, h, w], the token mask [h, w] and the region's name; None without edit.image."""
    from halton.sampling import editing

    given = [name for name in EDIT_REGIONS if edit[name] is not None]
    if edit.image is None:
        if given:
            raise ValueError(f"edit.{given[0]} needs the image to edit; pass edit.image=PATH")
        return None
    if len(given) != 1:
        raise ValueError(f"edit.image needs exactly one region, got {len(given)} ({', '.join(given) or 'none'}); "
                         "allowed: edit.box=[x0,y0,x1,y1], edit.mask=PATH or edit.outpaint=[top,right,bottom,left]")
    region, dilate = given[0], editing.check_dilate(edit.dilate)
    grid = tuple(net.grid)
    image_size = (grid[0] * tokenizer.downsample, grid[1] * tokenizer.downsample)
    original = editing.read_image(edit.image, image_size, tokenizer.channels)[None].to(device)
    start = original
    codes = tokenizer.encode(original)
    if region == "box":
        mask = editing.box_mask(plain(edit.box), image_size, grid, dilate)
    elif region == "mask":
        mask = editing.image_mask(editing.read_image(edit.mask, image_size, 1, mask=True), grid, dilate)
    else:  # shift the codes (exact tokens), and the pixels alike for the pictures and compositing
        sides = editing.outpaint_tokens(plain(edit.outpaint), image_size, grid)
        codes = editing.shift(codes, sides, net.mask_id)
        start = editing.shift(original, plain(edit.outpaint), -1.0)
        mask = editing.dilate_mask(editing.outpaint_mask(sides, grid), dilate)
    return original, start, editing.apply_mask(codes, mask, net.mask_id), mask.to(device), region


def edit_grid(original, start, after, mask, labels: list[str], per_row: int):
    """A row per condition: the input, the image the edit starts from with its region painted, then the results."""
    import torch

    from halton.sampling.editing import pixel_mask
    from halton.utils.images import MASK_COLOUR, class_grid

    def rgb(images):
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    colour = (torch.tensor(MASK_COLOUR, device=start.device) * 2 - 1).view(1, 3, 1, 1)
    masked = torch.where(pixel_mask(mask, tuple(start.shape[-2:])), colour, rgb(start))
    rows = len(labels)
    shown = [rgb(original).expand(rows, 1, -1, -1, -1), masked.expand(rows, 1, -1, -1, -1),
             rgb(after).reshape(rows, per_row, 3, *after.shape[-2:])]
    return class_grid(torch.cat(shown, dim=1).flatten(0, 1), rows, per_row + 2, labels)


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@entry_point
def main(cfg: DictConfig) -> None:
    import torch
    from hydra.utils import instantiate

    from halton.evaluation.results import file_stem, interval_text
    from halton.sampling import sample
    from halton.sampling.editing import composite
    from halton.sampling.schedules import schedule_label
    from halton.utils.images import class_grid, progression_grid, save_png

    device = resolve_device(cfg.device)
    autocast = resolve_autocast(cfg.precision, device)
    scheduler = instantiate(cfg.scheduler)
    datamodule = instantiate(cfg.data)
    net = load_network(cfg.model.net, cfg.checkpoint, cfg.official_heads).to(device)
    kind = condition_kind(cfg)
    classes = None if cfg.classes is None else [cfg.classes] if isinstance(cfg.classes, int) else list(cfg.classes)
    values = kind.requested(net, classes, read_prompts(cfg))
    kind.check_model(net)  # e.g. the text encoder's width against the model's
    rows = torch.arange(len(values), device=device).repeat_interleave(cfg.per_class)
    condition = kind.make(values, device).index(rows)
    tokenizer = datamodule.tokenizer.to(device)
    edit = prepare_edit(cfg.edit, tokenizer, net, device)
    init_codes = None if edit is None else edit[2].expand(len(rows), -1, -1)  # the same edit for every row
    cfg_interval = plain(cfg.cfg_interval)
    result = sample(net, scheduler, condition, steps=cfg.steps, cfg_weight=cfg.cfg_weight, temp_min=cfg.temp_min,
                    temp_max=cfg.temp_max, temp_pow=cfg.temp_pow, temp_warmup=cfg.temp_warmup, top_k=cfg.top_k,
                    schedule=cfg.schedule, schedule_power=cfg.schedule_power, schedule_rate=cfg.schedule_rate,
                    seed=cfg.seed, cfg_interval=cfg_interval, init_codes=init_codes,
                    return_history=cfg.progression, autocast_dtype=autocast, progress=True)
    log.info(f"{result.nfe_per_image} network evaluations per image")
    images = tokenizer.decode(result.codes)
    stem = file_stem(scheduler.label(), cfg.steps, cfg.cfg_weight, cfg.seed, interval_text(cfg_interval),
                     schedule_label(cfg.schedule, cfg.schedule_power, cfg.schedule_rate))
    out_dir = Path(cfg.out_dir)
    labels = [kind.label(v) for v in values]
    if edit is None:
        path = save_png(class_grid(images, len(values), cfg.per_class, labels), out_dir / f"{stem}.png")
    else:
        original, start, _, mask, region = edit
        if cfg.edit.composite:
            images = composite(images, start, mask)
        path = save_png(edit_grid(original, start, images, mask, labels, cfg.per_class),
                        out_dir / f"{stem}_edit-{region}.png")
    log.info(f"wrote {path}")
    if cfg.report_accuracy and edit is None and hasattr(datamodule, "recognition_accuracy"):
        asked = [values[int(r)] for r in rows]
        accuracy = datamodule.recognition_accuracy(images, asked)
        log.info(f"{scheduler.label()}, {cfg.steps} steps: a digit classifier reads the requested digit in "
                 f"{100 * accuracy:.1f}% of {len(asked)} samples")
    if cfg.progression:
        first = [r * cfg.per_class for r in range(min(cfg.progression_samples, len(values)))]
        decoded = [tokenizer.decode(codes[first]) for codes in result.codes_per_step]
        masked = [codes[first] == net.mask_id for codes in result.codes_per_step]
        labels_per_step = [f"{i + 1}" for i in range(cfg.steps)]
        path = save_png(progression_grid(decoded, masked, labels_per_step), out_dir / f"{stem}_progression.png")
        log.info(f"wrote {path}")


if __name__ == "__main__":
    run(main, "sample")
