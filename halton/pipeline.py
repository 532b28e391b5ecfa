"""One call from a trained model to pictures, as diffusers' pipelines are::

    from halton import Pipeline

    pipe = Pipeline.from_pretrained("runs/digits")           # a run folder, a checkpoint, an export, hf://owner/repo
    out = pipe(classes=[3, 7], steps=16, cfg_weight=1.0, seed=0)
    out.images[0].save("three.png")                           # PIL images; out.codes, out.nfe_per_image

A :class:`Pipeline` bundles the transformer, the tokenizer that decodes its codes, its kind of condition (classes,
or prompts through its frozen text encoder), a scheduler and default sampling options. ``python -m halton.export``
writes all of it (``pipeline.json`` beside the model), so an export or its hub repository loads alone. ``sample.py``,
``evaluate.py`` and the app draw through a pipeline too: :meth:`Pipeline.__call__` for pictures,
:meth:`Pipeline.draw` for the codes of conditions already made (the evaluation's batches, each with its own
generator)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from halton.export import PIPELINE_FILE, recipe, replace_folder, save_pipeline
from halton.options import SamplingOptions

if TYPE_CHECKING:
    from halton.build import Built

RUN_CONFIG = Path(".hydra") / "config.yaml"  # the config a train.py run was composed with (Hydra writes it)
DECODE_BATCH = 16  # codes decoded at once: a VQ decoder's activations are large


@dataclass
class PipelineOutput:
    """What a call drew: ``images`` (PIL, one per sample, in the order asked: each class or prompt
    ``per_condition`` times; for an edit of several images, image by image), their token ``codes`` [B, h, w], and
    what the run cost: ``nfe_per_image`` (trunk forwards per image, a guided pair counting 2), ``nfe_per_step`` and
    ``position_layers_per_image`` (the trunk's cost in positions x blocks: what a cached run, ``cache_refresh=``,
    saves). Also ``pixels``, the images as a tensor [B, C, H, W] in [-1, 1] (for grids), ``values``, the classes
    or prompts drawn (once each, in order), ``codes_per_step`` (with ``return_history=True``: the codes after each
    step, the mask id where a token is still masked) and ``edit``, the :class:`halton.sampling.editing.Edit` of an
    edit (its original, start and region: :func:`halton.sampling.editing.edit_grid`)."""

    images: list[Image.Image]
    codes: torch.Tensor
    nfe_per_image: int
    nfe_per_step: list[int]
    position_layers_per_image: int
    pixels: torch.Tensor | None = None
    values: list = field(default_factory=list)
    codes_per_step: list[torch.Tensor] = field(default_factory=list)
    edit: Any = None


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Decoded images [B, C, H, W] in [-1, 1] as PIL images (grey for one channel)."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


class Pipeline:
    """A model ready to draw: ``pipe(classes=[...])`` or ``pipe(prompt=...)`` (see :meth:`__call__`)."""

    def __init__(self, model, tokenizer, condition, scheduler: Any = "halton", sampling: SamplingOptions | None = None,
                 device: torch.device | str = "cpu"):
        from halton.sampling import as_scheduler

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        self.condition = condition
        self.condition.check_model(self.model)
        self.scheduler = as_scheduler(scheduler)
        # options given are checked against the model now; without, SamplingOptions()'s defaults, which a call
        # may replace (steps=32 does not fit a model of fewer tokens: a call that keeps it is refused then)
        self.sampling = SamplingOptions() if sampling is None else sampling.fit(self.model.num_tokens,
                                                                                 self.model.codebook_size)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_config(cls, cfg: DictConfig, device: torch.device | str = "cpu") -> Pipeline:
        """The pipeline of a composed sample.py / evaluate.py / app config (``checkpoint=``, the data config's
        tokenizer, ``model.condition``, the scheduler and sampling options)."""
        from halton.build import build_from_config

        return cls.from_built(build_from_config(cfg, device), device)

    @classmethod
    def from_built(cls, built: Built, device: torch.device | str = "cpu") -> Pipeline:
        """The pipeline of parts :func:`halton.build.build_from_config` built and loaded onto ``device`` (what
        :meth:`from_config` does in one go; sample.py and evaluate.py keep ``built.data``, the data module: the
        digits' classifier reads their samples back)."""
        from halton.options.rules import from_config

        cfg = built.cfg
        # sample.py's options; a training run's: those of its sample grids (steps, cfg_weight)
        node = cfg if "steps" in cfg else OmegaConf.select(cfg, "model.sample_grid") or {}
        return cls(built.net, built.tokenizer, built.kind, built.scheduler, from_config(SamplingOptions, node), device)

    @classmethod
    def from_pretrained(cls, source: str | Path, *, device: torch.device | str = "cpu",
                        experiment: str | None = None, overrides: Sequence[str] = ()) -> Pipeline:
        """Load from ``source``:

        - a folder written by ``python -m halton.export`` (or its hub repository, ``hf://owner/repo[@revision]``);
        - a train.py run folder (``runs/<name>``: its ``last.ckpt``) or a checkpoint in one (its run's config says
          which tokenizer and condition);
        - any checkpoint with ``experiment=`` (a released ``.pth``: ``experiment="hmaskgit_t_256"``, which names its
          heads and tokenizer), composed like ``sample.py experiment=... checkpoint=source`` plus ``overrides``.
        """
        from halton.models.loading import is_model_folder, load_pretrained
        from halton.utils.hub import hub_file, is_hub_path, parse

        source = str(source)
        if experiment is not None:  # composed and checked as sample.py's command line would be
            from halton.cli import preflight

            (cfg,) = preflight([f"experiment={experiment}", f"checkpoint={source}", *overrides], "sample")
            return cls.from_config(cfg, device)
        if is_model_folder(source):
            recipe_file = (hub_file(str(parse(source.rstrip("/")).file(PIPELINE_FILE)), "pipeline recipe")
                           if is_hub_path(source) else Path(source).expanduser() / PIPELINE_FILE)
            if not Path(recipe_file).is_file():
                raise FileNotFoundError(f"{source} holds a model but no {PIPELINE_FILE} (exported before pipelines): "
                                        "export it again with python -m halton.export, or pass experiment=NAME")
            saved = json.loads(Path(recipe_file).read_text())
            return cls(load_pretrained(source), instantiate(saved["tokenizer"]), instantiate(saved["condition"]),
                       saved["scheduler"], SamplingOptions(**saved["sampling"]), device)
        run_dir, checkpoint = run_of(Path(source).expanduser())
        cfg = OmegaConf.load(run_dir / RUN_CONFIG)
        OmegaConf.update(cfg, "checkpoint", str(checkpoint), force_add=True)
        return cls.from_config(cfg, device)

    # ------------------------------------------------------------------ drawing
    @torch.no_grad()
    def __call__(self, classes: int | Sequence[int] | None = None, *, prompt: str | None = None,
                 prompts: Sequence[str] | None = None, per_condition: int = 1, scheduler: Any = None,
                 image: str | Path | Image.Image | None = None, box: Sequence[float] | None = None,
                 mask: str | Path | Image.Image | torch.Tensor | None = None, outpaint: Sequence[int] | None = None,
                 dilate: int = 0, edit: Any = None, paste_back: bool = False,
                 generator: torch.Generator | None = None, return_history: bool = False,
                 autocast_dtype: torch.dtype | None = None, progress: bool = False, **sampling) -> PipelineOutput:
        """Draw ``per_condition`` images for each of ``classes`` (class models; none: every class) or of
        ``prompt`` / ``prompts`` (text models), with ``scheduler`` (a name such as ``"confidence"``, a spec or a
        scheduler; default: the pipeline's) and any sampling option as a keyword (``steps``, ``cfg_weight``,
        ``temp_min``, ``top_k``, ``schedule``, ``seed``...; the others keep the pipeline's defaults).

        With ``image`` and one region (``box``, ``mask`` or ``outpaint``, ``dilate`` tokens of margin), regenerate
        that region of the image instead; or give ``edit``, an edit already made by
        :func:`halton.sampling.editing.prepare_edit` or, for several images each with its own region,
        :func:`~halton.sampling.editing.prepare_edits` (every class or prompt is drawn for each image, image by
        image). ``paste_back``: the original pixels outside the regenerated tokens.

        ``generator``: the random stream (default: one seeded with ``seed`` on the pipeline's device, as
        :func:`halton.sampling.sample` does); ``return_history``: also the codes after each step
        (``codes_per_step``); ``autocast_dtype``: the model's autocast (e.g. ``torch.bfloat16`` on a GPU);
        ``progress``: a progress bar over the steps."""
        from halton.options.rules import integer
        from halton.sampling.editing import prepare_edit

        integer("per_condition", per_condition, 1)
        classes = [classes] if isinstance(classes, int) else None if classes is None else list(classes)
        asked = ([prompt] if prompt is not None else []) + list(prompts or [])
        values = self.condition.requested(self.model, classes, asked)
        if image is not None:
            if edit is not None:
                raise ValueError("image= and edit= both given; allowed: an image with its region, or an edit made "
                                 "by prepare_edit / prepare_edits")
            edit = prepare_edit(self.model, self.tokenizer, image, box=box, mask=mask, outpaint=outpaint,
                                dilate=dilate, device=self.device)
        images_edited = 1 if edit is None else len(edit.init_codes)
        # each value per_condition times; for several edited images, all of them for each image in turn
        rows = torch.arange(len(values), device=self.device).repeat_interleave(per_condition).repeat(images_edited)
        condition = self.condition.make(values, self.device).index(rows)
        init_codes = None if edit is None else edit.per_row(len(rows))[1]  # each image's for its rows
        result = self.draw(condition, scheduler=scheduler, init_codes=init_codes, generator=generator,
                           return_history=return_history, autocast_dtype=autocast_dtype, progress=progress, **sampling)
        pixels = self.decode(result.codes)
        if edit is not None:
            pixels = edit.finish(pixels, paste_back=paste_back)
        return PipelineOutput(to_pil(pixels), result.codes, result.nfe_per_image, list(result.nfe_per_step),
                              result.position_layers_per_image, pixels, list(values), list(result.codes_per_step),
                              edit)

    @torch.no_grad()
    def draw(self, condition, *, scheduler: Any = None, init_codes: torch.Tensor | None = None,
             generator: torch.Generator | None = None, return_history: bool = False, fill_steps: tuple[int, ...] = (),
             autocast_dtype: torch.dtype | None = None, progress: bool = False, **sampling):
        """The codes for a condition already made (``pipe.condition.make(values, pipe.device)``, one row per
        sample): :func:`halton.sampling.sample` with this pipeline's model, its scheduler (or ``scheduler``) and its
        sampling options, ``sampling`` keywords replacing them; its :class:`~halton.sampling.SamplingResult`
        (``fill_steps``, ``return_history``: the partial images and the per-step record the evaluation reads)."""
        from halton.sampling import as_scheduler, sample

        return sample(self.model, self.scheduler if scheduler is None else as_scheduler(scheduler), condition,
                      self.sampling, init_codes=init_codes, generator=generator, return_history=return_history,
                      fill_steps=fill_steps, autocast_dtype=autocast_dtype, progress=progress, **sampling)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] as images [B, C, H, W] in [-1, 1], decoded DECODE_BATCH at a time."""
        return torch.cat([self.tokenizer.decode(chunk) for chunk in codes.split(DECODE_BATCH)])

    def recipe(self) -> dict[str, Any]:
        """What ``pipeline.json`` holds (:func:`recipe`)."""
        return recipe(self.tokenizer, self.condition, self.scheduler, self.sampling)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the pipeline as ``python -m halton.export`` does (into a new or empty folder, or over an earlier
        export): :meth:`from_pretrained` loads it alone, here or from its hub repository after ``hf upload owner/repo FOLDER``."""
        return replace_folder(Path(folder).expanduser(),
                              lambda new: save_pipeline(new, self.model, self.recipe()))


def run_of(path: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) of a train.py run folder (its ``checkpoints/last.ckpt``) or of a checkpoint in one."""
    if path.is_dir():
        run_dir, checkpoint = path, path / "checkpoints" / "last.ckpt"
    else:
        run_dir, checkpoint = path.parent.parent, path
    if not (run_dir / RUN_CONFIG).is_file() or not checkpoint.is_file():
        raise FileNotFoundError(f"{path} is not a train.py run folder or a checkpoint in one (no {RUN_CONFIG} or "
                                "checkpoints/last.ckpt); allowed: runs/<name>, runs/<name>/checkpoints/<file>.ckpt, "
                                "an export folder, hf://owner/repo, or a checkpoint with experiment=NAME")
    return run_dir, checkpoint
