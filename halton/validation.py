"""The entry points' pre-flight stage: the composed config's values become the option objects of
:mod:`halton.options` (which own every range, choice and cross-field rule), and what needs the file system or the
hub is checked here (inputs exist and are readable, outputs writable, shards present), before anything is seeded,
built or written. Standard library, OmegaConf and Hydra only, so that a bad value is answered in about a second;
what needs torch (checkpoints fit, a GPU is there, the scheduler's own options) is :func:`halton.cli.check_inputs`.

Each entry point has one rule function (``RULES``); a rule raises :class:`Invalid`, a one-line message that names
the value and says what is allowed."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from halton.models.loading import TRAIN_HINT, is_model_folder
from halton.options import (
    EditOptions,
    MaskingOptions,
    OptimizerOptions,
    SamplingOptions,
    rules,
    under,
)
from halton.options.choices import SOURCE_FORMATS
from halton.options.drawing import DrawOptions, ServeOptions
from halton.options.evaluation import EvaluationOptions, PromptSetOptions, ReferenceOptions
from halton.options.extraction import (
    ExtractionOptions,
    TextEncodingOptions,
    captioned,
    check_captions,
    check_extraction_tokenizer,
)
from halton.options.rules import Invalid
from halton.options.text import TextDataOptions
from halton.options.trainer import TrainerOptions, check_callbacks
from halton.utils.files import read_lines
from halton.utils.hub import FILE_GRAMMAR, GRAMMAR, hub_parts, is_hub_path, reads_as_path

# Hydra's configs: the clone's top-level conf/ (what an editable install reads too); a wheel installs that folder as
# the package's data, halton/conf (setup.py).
_PACKAGE = Path(__file__).resolve().parent
CONFIG_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"
_ABSENT = object()


class Checks:
    """Reads of a composed config: each returns the value or raises :class:`Invalid` naming ``key=value``."""

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
        return rules.integer(key, self.get(key) if value is _ABSENT else value, low, high, optional, note)

    def number(self, key: str, optional: bool = False, **bounds) -> float | None:
        return rules.number(key, self.get(key), optional=optional, **bounds)

    def boolean(self, key: str) -> bool:
        return rules.boolean(key, self.get(key))

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        return rules.choice(key, self.get(key), allowed)

    def options(self, kind: type, prefix: str = "", **limits):
        """The option object ``kind`` from the keys under ``prefix`` (the keys it does not know are not its)."""
        node = self.get(prefix.rstrip(".")) if prefix else self.cfg
        names = [f.name for f in dataclasses.fields(kind)]
        values = {name: self.get(prefix + name) for name in names if name in node}
        with under(prefix):
            return kind(**values, **limits)

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
            if parts is None or (parts.filename is None and not model_folder):
                raise Invalid(f"{key}={value} is not a hub name; allowed: {GRAMMAR if model_folder else FILE_GRAMMAR}")
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

    def local_path(self, key: str) -> None:
        """A model given as a hub name (``org/name``) or a local folder: a value that reads as a path must exist."""
        text = str(self.get(key) or "")
        if text and reads_as_path(text) and not Path(text).expanduser().is_dir():
            raise Invalid(f"{key}={text}: no such folder; allowed: a local model folder or a hub name (org/name)")


def num_tokens(c: Checks) -> int:
    grid = c.get("data.grid")
    return int(grid[0]) * int(grid[1])


def check_common(c: Checks) -> None:
    name = str(c.get("name"))
    if not name.strip() or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise Invalid(f"name={name!r} is not a run name; allowed: one folder name under runs/ (letters, digits, "
                      "spaces, - _ .; no / or \\, not starting with .)")
    rules.seed(c.get("seed"))


def check_scheduler(c: Checks, key: str = "scheduler") -> None:
    """The scheduler's options have the types of its config's defaults, and numbers are finite (the scheduler
    checks its own ranges when it is built)."""
    options = c.get(key)
    target = options.get("_target_") if isinstance(options, dict) else None
    # the defaults as the config file gives them on its own (halton's randomize reads an optional top-level key)
    defaults = next((OmegaConf.to_container(OmegaConf.load(p), resolve=True)
                     for p in (CONFIG_DIR / "scheduler").glob("*.yaml") if OmegaConf.load(p).get("_target_") == target),
                    None)
    for option, value in (options.items() if defaults is not None else ()):
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


def sampling_options(c: Checks) -> SamplingOptions:
    """The run's :class:`SamplingOptions` (conf/sampling), checked against the data config's tokens and codes."""
    return c.options(SamplingOptions, num_tokens=num_tokens(c), codebook_size=c.get("data.codebook_size"))


def check_checkpoint(c: Checks) -> None:
    """What sample.py and evaluate.py load: the checkpoint and, for a released .pth, its heads."""
    c.integer("official_heads", 1, optional=True)
    c.input_file("checkpoint", hint=TRAIN_HINT, hub=True, model_folder=True)


def is_text_model(c: Checks) -> bool:
    return c.has("model.condition") and str(c.get("model.condition._target_")).endswith("TextKind")


def check_conditions(c: Checks) -> None:
    """sample.py's and the app's classes, or prompt, prompts and prompt_file: class ids of the data config, or
    non-empty texts and an existing file, and only for a model of that kind."""
    classes, count = c.get("classes"), c.get("data.num_classes")
    for value in classes if isinstance(classes, list) else [] if classes is None else [classes]:
        c.integer("classes", 0, count - 1, value=value)
    if classes == []:
        raise Invalid(f"classes=[] draws nothing; allowed: class ids 0 to {count - 1}, or null for all")
    prompt, prompts = c.get("prompt") if c.has("prompt") else None, c.get("prompts")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise Invalid(f"prompt={prompt!r} is empty; allowed: a text, e.g. prompt=\"a red fox in the snow\"")
    if prompts is not None and (not isinstance(prompts, list) or not prompts):
        raise Invalid(f"prompts={prompts!r} is not a list of texts; allowed: e.g. prompts='[a red fox,a blue car]'")
    for index, text in enumerate(prompts or []):
        if not isinstance(text, str) or not text.strip():
            raise Invalid(f"prompts[{index}]={text!r} is empty; allowed: non-empty texts")
    if c.has("prompt_file") and c.get("prompt_file") is not None:
        check_prompt_file(c, "prompt_file", "; one prompt per line")
    given = [key for key in ("prompt", "prompts", "prompt_file") if c.has(key) and c.get(key) is not None]
    if given and not is_text_model(c):
        raise Invalid(f"{given[0]} is for text-to-image models; experiment={c.get('name')} is class-conditional: "
                      "give classes=[...] (or nothing for every class)")
    if classes is not None and is_text_model(c):
        raise Invalid(f"classes={classes} is for class-conditional models; experiment={c.get('name')} is "
                      "text-to-image: give prompt=..., prompts=[...] or prompt_file=PATH")


def check_prompt_file(c: Checks, key: str, hint: str) -> None:
    """A prompt file: readable UTF-8 text with at least one prompt (read here, before any model loads)."""
    path = c.input_file(key, hint=hint)
    try:
        prompts = read_lines(path, key)
    except ValueError as error:
        raise Invalid(str(error)) from None
    if not prompts:
        raise Invalid(f"{key}={path} holds no prompt; allowed: a text file with one prompt per line")


def check_drawing(c: Checks) -> None:
    """What sample.py and the app share: the sampling options, the classes or prompts, the device, precision and
    checkpoint."""
    check_common(c)
    sampling_options(c)
    check_scheduler(c)
    check_conditions(c)
    c.options(DrawOptions)
    c.input_file("vq_checkpoint", optional=True, hub=True)
    check_checkpoint(c)


def check_sample(c: Checks) -> None:
    check_drawing(c)
    c.input_file("edit.image", optional=True)
    c.input_file("edit.mask", optional=True)
    edit = c.options(EditOptions, "edit.")
    for name in ("images", "masks"):
        for index in range(len(getattr(edit, name) or ())):
            c.input_file(f"edit.{name}.{index}")
    c.writable("out_dir")


def check_evaluate(c: Checks) -> None:
    check_common(c)
    steps = sampling_options(c).steps
    check_scheduler(c)
    text = is_text_model(c)
    evaluation = c.options(EvaluationOptions, num_classes=None if text else c.get("data.num_classes"), steps=steps)
    if text:  # the evaluation prompts and the CLIP model
        source = c.options(PromptSetOptions, "prompt_set.").source
        hint = " (coco: annotations/captions_val2014.json; file: one prompt per line)"
        if source == "file":
            check_prompt_file(c, "prompt_set.path", hint)
        elif source == "coco":
            c.input_file("prompt_set.path", hint=hint)
        c.local_path("clip_model")
    if "inception" in evaluation.extractors:
        c.input_file("inception_weights", optional=True, hub=True)
    if "dinov2" in evaluation.extractors:
        c.local_path("dinov2_weights")
    kind = c.options(ReferenceOptions, "reference.", extractors=evaluation.extractors).kind
    if kind == "file":
        c.input_file("reference.path")
    elif kind in ("folder", "coco"):
        c.input_folder("reference.path")
    if kind == "coco":
        c.input_file("reference.captions", hint=" (annotations/captions_val2014.json or captions_val2017.json)")
    c.writable("results", is_file=True)
    c.input_file("vq_checkpoint", optional=True, hub=True)
    check_checkpoint(c)


# Lightning's loggers whose package is an optional extra (pyproject.toml): class -> (extra, modules it can use)
LOGGER_EXTRAS = {"WandbLogger": ("wandb", ("wandb",)),
                 "TensorBoardLogger": ("tensorboard", ("tensorboard", "tensorboardX"))}


def check_loggers(c: Checks) -> None:
    """logger=wandb or logger=tensorboard without its package: one line naming the extra, before anything runs."""
    for name, logger in (c.get("logger") or {}).items():
        logger_class = str((logger or {}).get("_target_", "")).rpartition(".")[2]
        if logger_class in LOGGER_EXTRAS:
            rules.extra(f"logger={name}", *LOGGER_EXTRAS[logger_class])


def check_train(c: Checks) -> None:
    check_common(c)
    check_loggers(c)
    c.boolean("resume")
    c.input_file("ckpt_path", optional=True, hub=True)
    c.options(TrainerOptions, "trainer.")
    c.options(OptimizerOptions, "model.")
    c.options(MaskingOptions, "model.")
    c.boolean("model.compile")
    c.boolean("model.fp8")
    grid = c.get("model.sample_grid") or {}
    if "per_class" in grid:  # options left out take the module's defaults
        c.integer("model.sample_grid.per_class", 1)
    if grid:
        c.options(SamplingOptions, "model.sample_grid.", num_tokens=num_tokens(c),
                  codebook_size=c.get("data.codebook_size"))
    if isinstance(grid.get("scheduler"), dict):
        check_scheduler(c, "model.sample_grid.scheduler")
    c.integer("data.batch_size", 1)
    c.integer("data.num_workers", 0)
    check_callbacks({name: c.get(f"callbacks.{name}") for name in ("ema", "progress_bar", "throughput",
                                                                      "model_checkpoint")})
    if c.get("callbacks.model_checkpoint") is not None:
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
    c.options(TextDataOptions, "data.")
    c.local_path("data.text_encoder")


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
    c.options(ExtractionOptions)
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
    check_extraction_tokenizer(c.get("data"), c.get("vq_checkpoint"))
    c.integer("source.shard_size", 1, optional=True)
    c.boolean("source.captions")
    check_captions(c.get("text.embeddings"), captioned(kind, c.get("source.captions")), f"source.format={kind}")
    if c.options(TextEncodingOptions, "text.").embeddings == "precompute":
        c.local_path("text.encoder")
    c.input_file("vq_checkpoint", optional=True, hub=True)
    c.options(TrainerOptions, "trainer.", tpu=False)
    c.writable("out_dir")


def check_export(c: Checks) -> None:
    check_checkpoint(c)
    c.writable("out")


def check_app(c: Checks) -> None:
    """python -m halton.app: sample.py's checks of the page's first values, and where to serve it."""
    check_drawing(c)
    serve = c.options(ServeOptions)
    c.input_file("auth", optional=True)  # its lines are read before the model loads
    check_port(serve.host, serve.port)


def check_port(host: str, port: int | None) -> None:
    """The app can serve ``port`` (None or 0: a free one) on ``host``, and on 127.0.0.1 where Gradio first looks:
    a port another program (or a second app) holds is refused now, not by the web server once the model has
    loaded. Bound as the server binds (SO_REUSEADDR: a port its last user has just closed is free), then let go."""
    from halton.utils.files import errno_text

    free = "allowed: a free port, or port=0 (a free one, chosen at start)"
    local = "allowed: an address of this machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
    for address in dict.fromkeys((host.strip("[]"), "127.0.0.1")):
        try:
            family, kind, proto, _, where = socket.getaddrinfo(address, port or 0, type=socket.SOCK_STREAM)[0]
        except (socket.gaierror, UnicodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise Invalid(f"host={host} cannot be served: {reason}; {local}") from None
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as error:
                reason = errno_text(error.errno) if error.errno else str(error)
                if error.errno == errno.EADDRINUSE:
                    raise Invalid(f"port={port} is in use on {address} (another program, or another app, serves "
                                  f"it); {free}") from None
                if error.errno == errno.EADDRNOTAVAIL:
                    raise Invalid(f"host={host} cannot be served: {reason}; {local}") from None
                below = " (ports below 1024 need root)" if error.errno == errno.EACCES else ""
                raise Invalid(f"port={port} cannot be served on {address}: {reason}{below}; {free}") from None


RULES = {"train": check_train, "sample": check_sample, "evaluate": check_evaluate, "extract": check_extract,
         "export": check_export, "app": check_app}


def validate(cfg: DictConfig, entry: str) -> None:
    """Raise :class:`Invalid` for the first value of ``cfg`` that ``entry`` (train, sample, evaluate, extract,
    export, app) cannot use."""
    RULES[entry](Checks(cfg))
