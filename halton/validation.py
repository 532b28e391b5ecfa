"""The entry points' validation stage: every value a command line can get wrong, checked on the composed config
before anything is seeded, built, imported or written. Standard library, OmegaConf and Hydra only, so that a bad
value is answered in about a second; the checks that need torch (checkpoints, GPUs, the scheduler's own options)
are in :mod:`halton.cli`.

Each entry point has one rule function (``RULES``); a rule raises :class:`Invalid`, a one-line message that names
the value and says what is allowed."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from halton.utils.files import reads_as_path
from halton.models.loading import TRAIN_HINT, is_model_folder
from halton.utils.hub import hub_parts, is_hub_path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
# halton.sampling.schedules.SCHEDULES, halton.training.module.LOSS_ON and halton.training.masking's MASKINGS,
# LOSS_WEIGHTS and T_PER (tests keep them equal): importing those modules would import torch
SCHEDULES = ("arccos", "cosine", "linear", "square", "root", "poly", "exp", "log")
LOSS_ON = ("masked", "all")
MASKINGS = ("independent", "exact", "halton")
LOSS_WEIGHTS = ("none", "schedule")
T_PER = ("sample", "batch")
TRAIN_METRICS = ("train/loss", "train/acc")  # what MaskGITModule logs in training (a test keeps them equal)
PRECISIONS = ("auto", "fp32", "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
TRAINER_PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true",
                      "bf16-true", "transformer-engine", "transformer-engine-float16")
EXTRACTORS = ("inception", "digits")
REFERENCE_KINDS = ("digits", "folder", "webdataset", "file", "coco")
PROMPT_SOURCES = ("coco", "file", "digits")
TEXT_EMBEDDINGS = ("online", "precompute")  # halton.evaluation.prompts.PROMPT_SOURCES
SOURCE_FORMATS = ("auto", "imagefolder", "webdataset", "digits")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_ABSENT = object()


class Invalid(ValueError):
    """A value the run cannot use; the message is the one line the user sees."""


class Checks:
    """Typed reads of a composed config: each returns the value or raises :class:`Invalid` naming ``key=value``."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def has(self, key: str) -> bool:
        return OmegaConf.select(self.cfg, key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT

    def get(self, key: str) -> Any:
        try:
            value = OmegaConf.select(self.cfg, key, throw_on_missing=True)
        except OmegaConfBaseException as error:
            raise Invalid(f"{key} cannot be resolved: {str(error).splitlines()[0]}") from None
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value

    def integer(self, key: str, low: int | None = None, high: int | None = None, optional: bool = False,
                value: Any = _ABSENT, note: str = "") -> int | None:
        """A whole number in [low, high]; ``value`` checks one item of a list under ``key``; ``note`` explains
        the range."""
        value = self.get(key) if value is _ABSENT else value
        if value is None and optional:
            return None
        allowed = f"{_range(low, high)}{note}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{key}={value!r} is not a whole number; allowed: {allowed}{' or null' if optional else ''}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(f"{key}={value} is out of range; allowed: {allowed}")
        return value

    def number(self, key: str, low: float | None = None, high: float | None = None, above: float | None = None,
               below: float | None = None, optional: bool = False, note: str = "", value: Any = _ABSENT
               ) -> float | None:
        """A finite number with ``low <= value <= high`` and ``above < value < below``; ``value`` checks a value
        named ``key`` that is not in the config."""
        value = self.get(key) if value is _ABSENT else value
        if value is None and optional:
            return None
        bounds = _bounds(low, high, above, below) + note
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"{key}={value!r} is not a number; allowed: {bounds}{' or null' if optional else ''}")
        if not math.isfinite(value):
            raise Invalid(f"{key}={value} is not finite; allowed: {bounds}")
        if ((low is not None and value < low) or (high is not None and value > high)
                or (above is not None and value <= above) or (below is not None and value >= below)):
            raise Invalid(f"{key}={value} is out of range; allowed: {bounds}")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise Invalid(f"{key}={value!r} is not a boolean; allowed: true, false")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key)
        if value not in allowed:
            raise Invalid(f"{key}={value!r} is not one of the choices; allowed: {', '.join(allowed)}")
        return value

    def input_file(self, key: str, optional: bool = False, hint: str = "", hub: bool = False,
                   model_folder: bool = False) -> Path | None:
        """A readable file; with ``hub``, also ``hf://owner/repo/file`` (then None: fetched by the checks that
        need the network or the cache); with ``model_folder``, also a Hugging Face format model (a folder with
        config.json, or ``hf://owner/repo``)."""
        value = self.get(key)
        if value in (None, "") and optional:
            return None
        if value in (None, ""):
            raise Invalid(f"no {key} given; pass {key}=PATH")
        if (hub or model_folder) and is_hub_path(str(value)):
            parts = hub_parts(str(value))
            if parts is None or (parts[1] is None and not model_folder):
                raise Invalid(f"{key}={value} is not a hub name; allowed: hf://<owner>/<repo>/<file>"
                              + (" or hf://<owner>/<repo> (a model folder)" if model_folder else ""))
            return None
        path = Path(str(value)).expanduser()
        if model_folder and is_model_folder(path):
            return path
        if not path.is_file():
            raise Invalid(f"{key} not found: {value}" + (" (a folder; allowed: a file)" if path.is_dir() else hint))
        if not os.access(path, os.R_OK):
            raise Invalid(f"{key}={value} is not readable (permissions {path.stat().st_mode & 0o777:o})")
        return path

    def input_folder(self, key: str) -> Path:
        value = self.get(key)
        path = Path(str(value or "")).expanduser()
        if not value or not path.is_dir():
            raise Invalid(f"{key}={value}: no such folder")
        return path

    def writable(self, key: str, is_file: bool = False) -> Path:
        """A folder (or a file's folder) that exists and is writable, or that can be made in its nearest existing
        ancestor."""
        value = self.get(key)
        path = Path(str(value)).expanduser()
        if is_file and path.is_dir():
            raise Invalid(f"{key}={value} is a folder; allowed: a file path")
        folder = path.parent if is_file else path
        ancestor = next(p for p in [folder, *folder.parents] if p.exists())
        if not ancestor.is_dir():
            raise Invalid(f"{key}={value} cannot be written: {ancestor} is a file, not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise Invalid(f"{key}={value} cannot be written: no write permission in {ancestor}")
        return path


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f">= {low}" if low is not None else (f"<= {high}" if high is not None else "any whole number")


def _bounds(low, high, above, below) -> str:
    parts = [f">= {low:g}" if low is not None else "", f"> {above:g}" if above is not None else "",
             f"<= {high:g}" if high is not None else "", f"< {below:g}" if below is not None else ""]
    return " and ".join(p for p in parts if p) or "any finite number"


def num_tokens(c: Checks) -> int:
    grid = c.get("data.grid")
    return int(grid[0]) * int(grid[1])


def check_name(c: Checks) -> None:
    name = str(c.get("name"))
    if not name.strip() or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise Invalid(f"name={name!r} is not a run name; allowed: one folder name under runs/ (letters, digits, "
                      "spaces, - _ .; no / or \\, not starting with .)")


def check_common(c: Checks) -> None:
    check_name(c)
    c.integer("seed", 0, 2**32 - 1)


def check_scheduler(c: Checks, key: str = "scheduler") -> None:
    """The scheduler's options have the types of its config's defaults, and numbers are finite (the scheduler
    checks its own ranges when it is built)."""
    options = c.get(key)
    target = options.get("_target_") if isinstance(options, dict) else None
    # the defaults as the config file gives them on its own (halton's randomize reads an optional top-level key)
    defaults = next((OmegaConf.to_container(OmegaConf.load(p), resolve=True)
                     for p in (CONFIG_DIR / "scheduler").glob("*.yaml") if OmegaConf.load(p).get("_target_") == target),
                    None)
    if defaults is None:
        return
    for option, value in options.items():
        default = defaults.get(option)
        if option == "_target_" or default is None:
            continue
        if isinstance(default, bool):
            c.boolean(f"{key}.{option}")
        elif isinstance(default, (int, float)):
            c.number(f"{key}.{option}")
        elif not isinstance(value, type(default)):
            raise Invalid(f"{key}.{option}={value!r} has the wrong type; allowed: a {type(default).__name__} "
                          f"like {default!r}")


def check_sampling(c: Checks) -> None:
    """The sampling options of sample.py and evaluate.py."""
    c.integer("steps", 1, num_tokens(c), note=" (the number of tokens)")
    c.number("cfg_weight", low=0, note=" (0 disables guidance)")
    c.number("temp_min", above=0)
    c.number("temp_max", above=0)
    c.number("temp_pow", above=0)
    c.integer("temp_warmup", 0, c.get("steps"))
    c.integer("top_k", 0, c.get("data.codebook_size"), optional=True)
    c.choice("schedule", SCHEDULES)
    c.number("schedule_power", above=0, note=" (the poly exponent)")
    c.number("schedule_rate", above=0, note=" (the exp and log rate)")
    check_cfg_interval(c)
    check_scheduler(c)


def check_cfg_interval(c: Checks) -> None:
    """``cfg_interval``: null (always guided) or [t_min, t_max] in sampling time (halton.sampling.base)."""
    value = c.get("cfg_interval")
    if value is None:
        return
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
          and 0 <= value[0] < value[1] <= 1)
    if not ok:
        raise Invalid(f"cfg_interval={value!r} is not an interval; allowed: null (always guided) or [t_min, t_max] "
                      "with 0 <= t_min < t_max <= 1, e.g. [0.1, 0.3]")


def check_edit(c: Checks) -> None:
    """sample.py's editing options (the region's bounds need the tokenizer: checked when the image is read)."""
    if not c.has("edit"):
        return
    image = c.input_file("edit.image", optional=True)
    c.input_file("edit.mask", optional=True)
    regions = [key for key in ("box", "mask", "outpaint") if c.get(f"edit.{key}") is not None]
    if image is None and regions:
        raise Invalid(f"edit.{regions[0]} needs the image to edit; pass edit.image=PATH")
    if image is not None and len(regions) != 1:
        raise Invalid(f"edit.image needs exactly one region, got {len(regions)} ({', '.join(regions) or 'none'}); "
                      "allowed: edit.box=[x0,y0,x1,y1], edit.mask=PATH or edit.outpaint=[top,right,bottom,left]")
    box = c.get("edit.box")
    if box is not None and not (isinstance(box, list) and len(box) == 4):
        raise Invalid(f"edit.box={box!r} is not a box; allowed: [x0,y0,x1,y1] in pixels")
    for index in range(4 if box is not None else 0):
        c.number(f"edit.box.{index}")
    outpaint = c.get("edit.outpaint")
    if outpaint is not None:
        if not (isinstance(outpaint, list) and len(outpaint) == 4):
            raise Invalid(f"edit.outpaint={outpaint!r} is not four margins; allowed: [top,right,bottom,left] pixels")
        for index in range(4):
            c.integer(f"edit.outpaint.{index}", 0)
        if not any(outpaint):
            raise Invalid("edit.outpaint=[0, 0, 0, 0] extends nothing; allowed: at least one margin > 0")
    c.integer("edit.dilate", 0)
    c.boolean("edit.composite")


def check_checkpoint(c: Checks) -> None:
    """What sample.py and evaluate.py load: the checkpoint and, for a released .pth, its heads."""
    c.integer("official_heads", 1, optional=True)
    c.input_file("checkpoint", hint=TRAIN_HINT, hub=True, model_folder=True)


def check_classes(c: Checks) -> None:
    classes, count = c.get("classes"), c.get("data.num_classes")
    if classes is None:
        return
    for value in classes if isinstance(classes, list) else [classes]:
        c.integer("classes", 0, count - 1, value=value)
    if isinstance(classes, list) and not classes:
        raise Invalid(f"classes=[] draws nothing; allowed: class ids 0 to {count - 1}, or null for all")


def is_text_model(c: Checks) -> bool:
    return c.has("model.condition") and str(c.get("model.condition._target_")).endswith("TextKind")


def check_prompts(c: Checks) -> None:
    """sample.py's prompt, prompts and prompt_file: non-empty texts, an existing file, and only for a text model
    (class models take classes)."""
    given = []
    prompt = c.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise Invalid(f"prompt={prompt!r} is empty; allowed: a text, e.g. prompt=\"a red fox in the snow\"")
        given.append("prompt")
    prompts = c.get("prompts")
    if prompts is not None:
        if not isinstance(prompts, list) or not prompts:
            raise Invalid(f"prompts={prompts!r} is not a list of texts; allowed: e.g. prompts='[a red fox,a blue car]'")
        for index, text in enumerate(prompts):
            if not isinstance(text, str) or not text.strip():
                raise Invalid(f"prompts[{index}]={text!r} is empty; allowed: non-empty texts")
        given.append("prompts")
    if c.get("prompt_file") is not None:
        path = c.input_file("prompt_file", hint="; one prompt per line")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        if not any(ln and not ln.startswith("#") for ln in lines):
            raise Invalid(f"prompt_file={path} holds no prompt; allowed: a text file with one prompt per line")
        given.append("prompt_file")
    if given and not is_text_model(c):
        raise Invalid(f"{given[0]} is for text-to-image models; experiment={c.get('name')} is class-conditional: "
                      "give classes=[...] (or nothing for every class)")
    if c.get("classes") is not None and is_text_model(c):
        raise Invalid(f"classes={c.get('classes')} is for class-conditional models; experiment={c.get('name')} is "
                      "text-to-image: give prompt=..., prompts=[...] or prompt_file=PATH")


def check_evaluation_prompts(c: Checks) -> None:
    """A text model's evaluation prompts (evaluate.py's ``prompts``) and CLIP model."""
    source = c.choice("prompt_set.source", PROMPT_SOURCES)
    if source in ("coco", "file"):
        c.input_file("prompt_set.path", hint=" (coco: annotations/captions_val2014.json; file: one prompt per line)")
    c.integer("prompt_set.seed", 0, 2**32 - 1)
    c.choice("prompt_set.phrasings", ("seen", "unseen"))
    local_path(c, "clip_model")


def local_path(c: Checks, key: str) -> None:
    """A model given as a hub name (``org/name``) or a local folder: a value that reads as a path must exist."""
    value = c.get(key)
    if value in (None, ""):
        return
    text = str(value)
    if reads_as_path(text) and not Path(text).expanduser().is_dir():
        raise Invalid(f"{key}={text}: no such folder; allowed: a local model folder or a hub name (org/name)")


def check_drawing(c: Checks) -> None:
    """What sample.py and the app share: the sampling options, the classes or prompts, the device, precision and
    checkpoint."""
    check_common(c)
    check_sampling(c)
    check_prompts(c)
    check_classes(c)
    c.choice("precision", PRECISIONS)
    c.integer("per_class", 1)
    device = str(c.get("device"))
    if not DEVICE.fullmatch(device):
        raise Invalid(f"device={device!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
    c.input_file("vq_checkpoint", optional=True, hub=True)
    check_checkpoint(c)


def check_sample(c: Checks) -> None:
    check_drawing(c)
    check_edit(c)
    c.boolean("progression")
    c.integer("progression_samples", 1)
    c.boolean("report_accuracy")
    c.writable("out_dir")


def check_evaluate(c: Checks) -> None:
    check_common(c)
    check_sampling(c)
    c.choice("precision", PRECISIONS)
    images = c.integer("num_images", 1)
    if is_text_model(c):
        check_evaluation_prompts(c)
    else:
        classes = c.get("data.num_classes")
        if images % classes:
            raise Invalid(f"num_images={images} is not a multiple of the {classes} classes (class-balanced samples); "
                          f"allowed: {classes * max(1, images // classes)}, {classes * (images // classes + 1)}, ...")
    c.integer("batch_size", 1)
    if c.choice("extractor", EXTRACTORS) == "inception":
        c.input_file("inception_weights", optional=True, hub=True)
    kind = c.choice("reference.kind", REFERENCE_KINDS)
    if kind == "file":
        c.input_file("reference.path")
    elif kind == "folder":
        c.input_folder("reference.path")
    elif kind == "coco":
        c.input_folder("reference.path")
        c.input_file("reference.captions", hint=" (annotations/captions_val2014.json or captions_val2017.json)")
    elif kind == "webdataset" and not c.get("reference.path"):
        raise Invalid("reference.path is not set; allowed: webdataset image shards (a .tar file or a glob)")
    c.integer("reference.max_images", 1)
    steps = c.get("steps")
    intermediate = c.get("intermediate_steps")
    if not isinstance(intermediate, list):
        raise Invalid(f"intermediate_steps={intermediate!r} is not a list; allowed: e.g. [4,8,16], or []")
    for value in intermediate:
        c.integer("intermediate_steps", 1, steps, value=value)
    c.boolean("diagnostics")
    c.boolean("force")
    c.integer("grid_per_class", 0)
    c.writable("results", is_file=True)
    c.choice("accelerator", ACCELERATORS)
    c.integer("devices", 1)
    c.integer("num_nodes", 1)
    c.input_file("vq_checkpoint", optional=True, hub=True)
    check_checkpoint(c)


def check_trainer_devices(c: Checks, prefix: str = "trainer.") -> None:
    devices = c.get(f"{prefix}devices")
    if devices in ("auto", -1):
        return
    if isinstance(devices, list):
        for value in devices:
            c.integer(f"{prefix}devices", 0, value=value)
        return
    if isinstance(devices, str) and re.fullmatch(r"\d+(,\d*)*", devices):
        return
    c.integer(f"{prefix}devices", 1)


def check_train(c: Checks) -> None:
    check_common(c)
    c.boolean("resume")
    c.input_file("ckpt_path", optional=True, hub=True)
    c.integer("trainer.max_steps", 1)
    c.integer("trainer.max_epochs", -1)
    c.choice("trainer.accelerator", ACCELERATORS + ("tpu",))
    check_trainer_devices(c)
    c.integer("trainer.num_nodes", 1)
    precision = str(c.get("trainer.precision"))
    if precision not in TRAINER_PRECISIONS:
        raise Invalid(f"trainer.precision={precision!r} is not a precision; allowed: {', '.join(TRAINER_PRECISIONS)}")
    c.number("trainer.gradient_clip_val", low=0, optional=True)
    c.integer("trainer.accumulate_grad_batches", 1)
    c.integer("trainer.check_val_every_n_epoch", 1, optional=True)
    interval = c.get("trainer.val_check_interval")
    if isinstance(interval, float):
        c.number("trainer.val_check_interval", above=0, high=1)
    else:
        c.integer("trainer.val_check_interval", 1, optional=True)
    c.integer("trainer.log_every_n_steps", 1)
    c.number("model.lr", above=0)
    c.number("model.weight_decay", low=0)
    betas = c.get("model.betas")
    if not isinstance(betas, list) or len(betas) != 2:
        raise Invalid(f"model.betas={betas!r} is not two numbers; allowed: [beta1, beta2], each in [0, 1)")
    for i in range(2):
        c.number(f"model.betas.{i}", low=0, below=1)
    c.integer("model.warmup_steps", 0)
    c.number("model.min_lr_ratio", low=0, high=1)
    schedule = c.choice("model.mask_schedule", SCHEDULES)
    c.number("model.schedule_power", above=0, note=" (the poly exponent)")
    c.number("model.schedule_rate", above=0, note=" (the exp and log rate)")
    c.choice("model.masking", MASKINGS)
    if c.choice("model.loss_weight", LOSS_WEIGHTS) == "schedule" and schedule == "root":
        raise Invalid("model.loss_weight='schedule' does not work with model.mask_schedule='root' (its weight is "
                      "infinite at full masking); allowed: another schedule, or model.loss_weight=none")
    c.number("model.t_min", low=0, below=1)
    c.choice("model.t_per", T_PER)
    c.choice("model.loss_on", LOSS_ON)
    c.number("model.label_dropout", low=0, high=1)
    c.boolean("model.compile")
    c.boolean("model.fp8")
    grid = c.get("model.sample_grid") or {}
    for option, low in (("per_class", 1), ("steps", 1)):  # options left out take the module's defaults
        if option in grid:
            c.integer(f"model.sample_grid.{option}", low, num_tokens(c) if option == "steps" else None)
    if "cfg_weight" in grid:
        c.number("model.sample_grid.cfg_weight", low=0, note=" (0 disables guidance)")
    if isinstance(grid.get("scheduler"), dict):
        check_scheduler(c, "model.sample_grid.scheduler")
    c.integer("data.batch_size", 1)
    c.integer("data.num_workers", 0)
    if c.get("callbacks.ema") is not None:
        c.number("callbacks.ema.decay", low=0, high=1)
    if c.get("callbacks.progress_bar") is not None:
        c.integer("callbacks.progress_bar.refresh_rate", 0, note=" (0 hides the bar)")
        shown = c.get("callbacks.progress_bar.train_metrics")
        for name in shown if isinstance(shown, list) else [shown]:
            if name not in TRAIN_METRICS:
                raise Invalid(f"callbacks.progress_bar.train_metrics: {name!r} is not logged in training; allowed: "
                              f"a list of {', '.join(TRAIN_METRICS)}")
    if c.get("callbacks.throughput") is not None:
        c.number("callbacks.throughput.peak_tflops", above=0, optional=True)
    if c.get("callbacks.model_checkpoint") is not None:
        c.integer("callbacks.model_checkpoint.every_n_train_steps", 1, optional=True)
        c.writable("callbacks.model_checkpoint.dirpath")
    c.writable("trainer.default_root_dir")
    check_text_data(c)
    check_shards(c)


def check_text_data(c: Checks) -> None:
    """The digits' caption options (the text demo's data), and the text facts a data config states."""
    for key in ("data.text_dim", "data.text_length"):
        if c.has(key) and c.get(key) is not None:
            c.integer(key, 1)
    if not str(c.get("data._target_")).endswith("DigitsShardsDataModule") or not c.has("data.captions"):
        return
    captions = c.boolean("data.captions")
    if c.choice("data.text_embeddings", TEXT_EMBEDDINGS) == "precompute" and not captions:
        raise Invalid("data.text_embeddings=precompute encodes captions; allowed with data.captions=true")
    length = c.integer("data.text_max_length", 1)
    if c.has("data.text_length") and c.get("data.text_length") is not None and length != c.get("data.text_length"):
        raise Invalid(f"data.text_max_length={length} differs from data.text_length={c.get('data.text_length')} "
                      "(the length the model is configured for); allowed: the same value")
    local_path(c, "data.text_encoder")


def check_shards(c: Checks) -> None:
    """Shards made by python -m halton.data.extract must be there (the digits make their own on first use)."""
    target = str(c.get("data._target_"))
    if not target.endswith("CodeShardsDataModule"):
        return
    for split in ("data.train_split", "data.val_split"):
        name = c.get(split) if c.has(split) else None
        if name is None:
            continue
        folder = Path(str(c.get("data.root"))) / str(name)
        if not (folder / "manifest.json").is_file():
            raise Invalid(f"data.root={c.get('data.root')}: no shards in {folder} (no manifest.json); make them with "
                          f"python -m halton.data.extract data=<this data config> split={name} source.path=...")


def check_extract(c: Checks) -> None:
    split = str(c.get("split"))
    if not split or "/" in split or split.startswith("."):
        raise Invalid(f"split={split!r} is not a folder name; allowed: train, val, or another plain name")
    kind = c.choice("source.format", SOURCE_FORMATS)
    if kind != "digits":
        path = str(c.get("source.path") or "")
        if not path:
            raise Invalid("source.path is not set; allowed: an ImageFolder root or webdataset image shards "
                          "(a folder of .tar, a glob, or /data/{00000..01281}.tar)")
        pattern = re.search(r"[*?\[{]", path)
        folder = Path(path[:pattern.start()]).expanduser().parent if pattern else Path(path).expanduser()
        if not folder.exists():
            raise Invalid(f"source.path={path}: no such " + ("folder " + str(folder) if pattern else "file or folder"))
        tokenizer = str(c.get("data.tokenizer._target_") or "") if c.get("data.tokenizer") else ""
        if tokenizer.endswith("PixelTokenizer"):
            raise Invalid(f"source.format={kind} with a PixelTokenizer data config: it encodes the grey-level digits "
                          "only; allowed: source.format=digits, or a VQ data config (data=imagenet_codes "
                          "vq_checkpoint=...) for images")
    if c.get("data.tokenizer") is None:
        raise Invalid(f"data={c.get('data._target_')} has no tokenizer to extract with; allowed: a data config with "
                      "data.tokenizer (e.g. data=imagenet_codes)")
    if c.get("data.tokenizer").get("_partial_") and not (c.get("vq_checkpoint") or c.get("data.vq_checkpoint")):
        release = c.get("data.vq_release") if c.has("data.vq_release") else None
        raise Invalid("vq_checkpoint is not set: extraction needs the tokenizer weights"
                      f"{f' ({release})' if release else ''}; pass vq_checkpoint=PATH")
    c.integer("source.shard_size", 1, optional=True)
    c.integer("image_size", 1, optional=True)
    c.boolean("flip")
    c.integer("chunk_size", 1)
    c.integer("batch_size", 1)
    c.integer("num_workers", 0)
    c.choice("precision", PRECISIONS)
    c.boolean("source.captions")
    if c.choice("text.embeddings", TEXT_EMBEDDINGS) == "precompute":
        c.integer("text.max_length", 1)
        if not str(c.get("text.encoder") or "").strip():
            raise Invalid("text.encoder is not set; allowed: minilm, a local model folder or a hub name (org/name)")
        local_path(c, "text.encoder")
        if kind == "imagefolder" or (kind == "digits" and not c.get("source.captions")):
            raise Invalid(f"text.embeddings=precompute encodes captions, but source.format={kind} has none; allowed: "
                          "a source with captions (webdataset .txt or a json caption; source.captions=true for the "
                          "digits), or text.embeddings=online")
    c.input_file("vq_checkpoint", optional=True, hub=True)
    c.choice("trainer.accelerator", ACCELERATORS)
    check_trainer_devices(c)
    c.integer("trainer.num_nodes", 1)
    c.writable("out_dir")


def check_export(c: Checks) -> None:
    check_checkpoint(c)
    c.writable("out")


def check_app(c: Checks) -> None:
    """python -m halton.app: sample.py's checks of the page's first values, and where to serve it."""
    check_drawing(c)
    host = c.get("host")
    if not isinstance(host, str) or not host.strip():
        raise Invalid(f"host={host!r} is not a host name; allowed: e.g. 127.0.0.1 (this machine), 0.0.0.0 (every "
                      "interface)")
    c.integer("port", 0, 65535, optional=True, note=" (0 or null: a free port)")
    c.boolean("share")


RULES = {"train": check_train, "sample": check_sample, "evaluate": check_evaluate, "extract": check_extract,
         "export": check_export, "app": check_app}


def validate(cfg: DictConfig, entry: str) -> None:
    """Raise :class:`Invalid` for the first value of ``cfg`` that ``entry`` (train, sample, evaluate, extract,
    export, app) cannot use."""
    RULES[entry](Checks(cfg))
