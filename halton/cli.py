"""Shared plumbing of the entry points: the checks that run before Hydra starts (spellings, then every value of
the composed config, then the input files), one-line errors, cleaning up after a failed run, devices, loading
trained weights. Importing this module imports no torch: a bad value is answered before anything heavy loads."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from halton.validation import CONFIG_DIR, Invalid, validate

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, TypeError)
# Spellings of the scheduler choice that earlier versions (or other code bases) used.
SCHEDULER_SPELLINGS = ("sampler", "scheduler_options", "sampler_options")
# Hydra flags after which the task does not run (help, printing the config, completion): nothing to check
NO_TASK_FLAGS = ("-c", "--cfg", "-h", "--help", "-hh", "--hydra-help", "-i", "--info", "-sc", "--shell-completion",
                 "--experimental-rerun", "-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")
log = logging.getLogger("halton")
# torch deprecated a pytree check that Lightning still makes at every fit: not the user's concern
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# Lightning hints at srun whenever SLURM is installed; slurm/*.sbatch use srun, and running without it is deliberate.
warnings.filterwarnings("ignore", message="The `srun` command is available")
# What a single run (not a sweep) found before Hydra made its folder: removed again if the run fails on bad input.
_before_run: dict = {}


def fail(message: str) -> None:
    """Stop with ``error: message`` as the one line on stderr (also in the run's log file once Hydra has set up
    logging), exit code 2."""
    if logging.getLogger().handlers:
        log.error("error: %s", message)
    else:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def choices(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The configs of a group: conf/<group>/*.yaml."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _keys_of(path: Path) -> tuple[set[str], set[str]]:
    """(top-level keys, groups chosen in its defaults list) of one config file."""
    config = OmegaConf.load(path)
    groups = set()
    for entry in config.get("defaults", []):
        if not isinstance(entry, str):
            key = next(iter(entry)).split()[-1].lstrip("/").split("@")[0]
            groups.add(key)
    return set(config) - {"defaults"}, groups


def known_keys(config_name: str, config_dir: Path = CONFIG_DIR) -> tuple[set[str], set[str]]:
    """(keys a command line may set, config groups) of an entry point's primary config, counting the keys that
    experiments add (they are ``@package _global_``)."""
    keys, groups = _keys_of(config_dir / f"{config_name}.yaml")
    groups = {g for g in groups if not g.startswith("hydra")}
    for experiment in choices("experiment", config_dir):
        keys |= _keys_of(config_dir / "experiment" / f"{experiment}.yaml")[0]
    return keys | groups | {"hydra"}, groups


def check_overrides(argv: list[str], config_name: str, config_dir: Path = CONFIG_DIR) -> None:
    """Refuse, in one line and before Hydra starts, a ``group=choice`` naming a config that does not exist, a run
    without an experiment, a key the config does not have, and other spellings of the scheduler choice."""
    keys, groups = known_keys(config_name, config_dir)
    schedulers = ", ".join(choices("scheduler", config_dir))
    for arg in argv:
        key, sep, value = arg.partition("=")
        name = key.lstrip("+~")
        if not sep or arg.startswith("-") or name.startswith("hydra") or "@" in name or "/" in name:
            continue  # flags (-m, --cfg job), Hydra's own settings (checked by Hydra)
        top, dot, rest = name.partition(".")
        if top in SCHEDULER_SPELLINGS:
            use = f"scheduler.{rest}={value}" if dot else (f"scheduler={value}" if top == "sampler" else
                                                             "scheduler.OPTION=value")
            fail(f"unknown option {arg}; use {use} (scheduler=NAME picks one of {schedulers}, "
                 "scheduler.OPTION=value sets its options)")
        if key.startswith("+"):
            continue  # adds a key on purpose
        if top == "scheduler" and dot:
            check_scheduler_option(rest, argv, config_dir)
        if top not in keys:
            close = difflib.get_close_matches(top, keys, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            fail(f"unknown option {arg}: there is no key {top!r}; {hint}allowed: {', '.join(sorted(keys))}")
        if dot or top not in groups or "(" in value:
            continue
        allowed = choices(top, config_dir)
        if top == "experiment" and value in ("", "null"):
            fail(f"experiment={value} leaves the run without an experiment; allowed: {', '.join(allowed)}")
        for choice in value.split(","):
            if choice not in allowed and choice not in ("", "null"):
                fail(f"unknown {top} {choice!r}; allowed: {', '.join(allowed)}")


def check_scheduler_option(option: str, argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """``scheduler.OPTION=value`` names an option of the chosen scheduler(s) (default: halton)."""
    chosen = [a.partition("=")[2] for a in argv if a.partition("=")[0].lstrip("+~") == "scheduler"]
    for name in (chosen[-1] if chosen else "halton").split(","):
        path = config_dir / "scheduler" / f"{name}.yaml"
        options = sorted(set(OmegaConf.load(path)) - {"_target_"}) if path.is_file() else None
        if options is not None and option.split(".")[0] not in options:
            fail(f"scheduler.{option} is not an option of the {name} scheduler; allowed: "
                 f"{', '.join(f'scheduler.{o}' for o in options) or 'none (it has no options)'}")


def composed_runs(argv: list[str], config_name: str) -> list[DictConfig] | None:
    """The config of every run the command line asks for (each cell of a ``-m`` sweep), with Hydra's own node
    resolvable; None when the command runs no task (``--cfg``, ``--help``, ...)."""
    if any(arg.split("=")[0] in NO_TASK_FLAGS for arg in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    overrides = [arg for arg in argv if not arg.startswith("-")]
    parser = OverridesParser.create()
    for arg in overrides:
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as error:
            raise Invalid(f"cannot read {arg}: {str(error).splitlines()[0]}; quote a value with special characters: "
                          "key='value'") from None
    if "-m" in argv or "--multirun" in argv:
        parsed = parser.parse_overrides(overrides)
        cells = [cell for batch in BasicSweeper.split_arguments(parsed, None) for cell in batch]
    else:
        cells = [overrides]
    configs = []
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        for cell in cells:
            cfg = compose(config_name, overrides=cell, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.experiment} in name
            configs.append(cfg)
    return configs


def check_inputs(cfg: DictConfig, entry: str) -> None:
    """The checks that need torch: the checkpoints a run reads (readable, weights only, of this configuration),
    a GPU where one is asked for, and the scheduler's own options."""
    import torch
    from hydra.utils import instantiate

    from halton.utils.checkpoint import read_checkpoint

    gpu_wanted = {"train": "trainer.accelerator", "evaluate": "accelerator", "extract": "trainer.accelerator"}
    key = gpu_wanted.get(entry)
    if key and OmegaConf.select(cfg, key) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise Invalid(f"{key}={OmegaConf.select(cfg, key)} but no CUDA GPU is visible here; allowed: "
                      f"{key}=cpu or auto" + (" (trainer=default or trainer=cpu)" if entry == "train" else ""))
    if entry in ("sample", "app"):
        resolve_device(cfg.device)
    if entry in ("sample", "evaluate", "app"):
        instantiate(cfg.scheduler)
    if entry in ("sample", "evaluate", "export", "app"):
        check_fits(read_model(cfg.checkpoint), cfg, cfg.checkpoint)
    if entry == "train":
        if isinstance(OmegaConf.select(cfg, "model.sample_grid.scheduler"), DictConfig):
            instantiate(cfg.model.sample_grid.scheduler)
        if cfg.ckpt_path:
            check_fits(read_checkpoint(cfg.ckpt_path, "ckpt_path"), cfg, cfg.ckpt_path)
        elif cfg.resume:
            path, state = resume_candidate(cfg, announce=False)
            if path:
                check_fits(state, cfg, path)
    for key in ("vq_checkpoint", "inception_weights"):
        if OmegaConf.select(cfg, key):
            read_checkpoint(OmegaConf.select(cfg, key), key)


def read_model(path):
    """What a checkpoint path holds, read without building the model: a Hugging Face format folder's config
    (``{"pretrained": config}``) or the checkpoint's dict."""
    from halton.models.hub import pretrained_config
    from halton.utils.checkpoint import read_checkpoint
    from halton.utils.hub import is_model_folder

    if is_model_folder(path):
        return {"pretrained": pretrained_config(str(path))}
    return read_checkpoint(path, "checkpoint")


def self_described_shapes(state: dict) -> dict:
    """The token grid, codebook and classes or text width of a checkpoint that carries its own model shapes: a
    Hugging Face format config (``{"pretrained": config}``) or a released checkpoint's weights."""
    from halton.models.official import strip_prefixes
    from halton.models.transformer import grid_of

    if "pretrained" in state:
        config = state["pretrained"]
        height, width = grid_of(config.get("input_size", 16))
        found = {"grid tokens": height * width, "codebook_size": config["codebook_size"]}
        if "text_dim" in config:
            return found | {"text width": config["text_dim"]}
        return found | {"num_classes": config.get("num_classes", 1000)}
    weights = strip_prefixes(state["model_state_dict"])
    found = {"grid tokens": weights["pos_emb.weight"].shape[0], "codebook_size": weights["tok_emb.weight"].shape[0] - 1}
    if "transformer.layers.0.cross_attn.mha.in_proj_weight" in weights:  # the text-to-image format
        return found | {"text width": weights["transformer.layers.0.mlp.0.weight"].shape[1]}
    return found | {"num_classes": weights["cls_emb.weight"].shape[0] - 1}


def check_fits(state, cfg: DictConfig, path) -> None:
    """A train.py checkpoint whose weights have the shapes of the config's model, or a released checkpoint or
    Hugging Face format folder (which carry their own model shapes) whose token grid, codebook and classes or
    text width are the data config's."""
    import torch
    from hydra.utils import instantiate

    if isinstance(state, dict) and ("pretrained" in state or "model_state_dict" in state):
        found = self_described_shapes(state)
        wanted = {"grid tokens": cfg.data.grid[0] * cfg.data.grid[1], "codebook_size": cfg.data.codebook_size}
        wanted |= {key: OmegaConf.select(cfg, option) for key, option in
                   (("text width", "data.text_dim"), ("num_classes", "data.num_classes")) if key in found}
        if found != wanted:
            raise Invalid(f"checkpoint {path} is of another configuration: it has {found}, the experiment's data "
                          f"config {wanted}")
        if "model_state_dict" in state and OmegaConf.select(cfg, "official_heads") is None:
            raise Invalid(f"checkpoint {path} is a released Halton-MaskGIT checkpoint; give its heads with "
                          "official_heads=N (tiny 6, small 6, base 12, large 16; text-to-image 16)")
        return
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise Invalid(f"checkpoint {path} is neither a train.py checkpoint (state_dict) nor a released Halton-MaskGIT "
                      "one (model_state_dict)")
    weights = model_weights(state)
    if not weights:
        raise Invalid(f"checkpoint {path} holds no model weights (no model.* entries in its state_dict)")
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    differs = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if differs:
        key = differs[0]
        raise Invalid(f"checkpoint {path} is of another configuration: {key} is {list(found[key])} there, "
                      f"{list(expected[key])} in this model config ({len(differs)} weights differ)")
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or extra:
        raise Invalid(f"checkpoint {path} is of another configuration: {len(missing)} weights of this model config "
                      f"missing there{f' (e.g. {missing[0]})' if missing else ''}, {len(extra)} unknown"
                      f"{f' (e.g. {extra[0]})' if extra else ''}")


def model_weights(state: dict) -> dict:
    """The transformer's weights in a train.py checkpoint: the ``model.`` entries of its ``state_dict`` (the EMA
    weights when EMA was on), without the DDP and torch.compile prefixes."""
    from halton.models.official import strip_prefixes

    state_dict = strip_prefixes(state["state_dict"])
    return strip_prefixes({k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")})


def resume_candidate(cfg: DictConfig, announce: bool = True) -> tuple[str | None, dict | None]:
    """Where an auto-resumed run continues, and that checkpoint as read: ``last.ckpt`` or, when that is missing or
    unreadable while numbered checkpoints exist, the newest readable one (saying so)."""
    from halton.utils.checkpoint import read_checkpoint

    folder = Path(cfg.callbacks.model_checkpoint.dirpath)
    if not folder.is_dir():
        return None, None
    last = folder / "last.ckpt"
    candidates = [last] * last.is_file() + sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime,
                                                  reverse=True)
    problems = []
    for path in dict.fromkeys(candidates):
        try:
            state = read_checkpoint(path)
        except ValueError as error:
            problems.append(str(error))
            continue
        if path != last and announce:
            reason = problems[0] if problems else f"{last} is missing"
            log.warning(f"resuming from {path}, the newest readable checkpoint: {reason}")
        return str(path), state
    if problems and announce:
        log.warning(f"no readable checkpoint in {folder}, starting from step 0: {problems[0]}")
    return None, None


def run(main, config_name: str, argv: list[str] | None = None) -> None:
    """Run an entry point: refuse bad spellings, bad values and bad input files in one line (exit 2) before Hydra
    makes a run folder, then hand over to Hydra's ``main``."""
    from hydra.errors import InstantiationException

    argv = sys.argv[1:] if argv is None else argv
    check_overrides(argv, config_name)
    try:
        configs = composed_runs(argv, config_name)
        for cfg in configs or []:
            validate(cfg, config_name)
        for cfg in configs or []:
            check_inputs(cfg, config_name)
    except Invalid as error:
        fail(str(error))
    except USER_ERRORS as error:  # raised by code the checks call (a device)
        fail(str(error).splitlines()[0])
    except InstantiationException as error:  # a scheduler refusing its options
        if not isinstance(error.__cause__, USER_ERRORS) or os.environ.get("HALTON_DEBUG"):
            raise
        fail(str(error.__cause__).splitlines()[0])
    except Exception as error:  # noqa: BLE001  Hydra's composition errors: one line too
        if os.environ.get("HALTON_DEBUG"):
            raise
        fail(str(error).strip().splitlines()[0])
    if configs and len(configs) == 1 and "-m" not in argv and "--multirun" not in argv:
        run_dir = Path(str(configs[0].hydra.run.dir)).absolute()
        _before_run.update(top=next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None),
                           run_dir=run_dir, files=set(run_dir.rglob("*")) if run_dir.is_dir() else set())
    main()


def remove_what_the_run_made() -> None:
    """After a failure on bad input: remove the run folder this run made (or, in an existing run folder, what the
    run added), never a checkpoint."""
    top, run_dir = _before_run.get("top"), _before_run.get("run_dir")
    if top is not None and top.exists():
        if not any(top.rglob("*.ckpt")):
            shutil.rmtree(top, ignore_errors=True)
        return
    if run_dir is None or not run_dir.is_dir():
        return
    for path in sorted(set(run_dir.rglob("*")) - _before_run["files"], key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        elif path.is_file() and path.suffix != ".ckpt":
            path.unlink()


def entry_point(task):
    """Wrap a Hydra task: Python warnings go to the run's log too, and bad values stop with one line on stderr,
    exit code 2 and the run folder removed (HALTON_DEBUG=1: the traceback instead)."""

    @functools.wraps(task)
    def wrapper(cfg):
        from hydra.errors import InstantiationException

        from halton.utils.logs import route_lightning_logs

        logging.captureWarnings(True)
        route_lightning_logs()  # every entry point's task uses Lightning (data modules, Trainer, Fabric)
        try:
            return task(cfg)
        except InstantiationException as error:
            cause = error.__cause__
            if isinstance(cause, USER_ERRORS) and not os.environ.get("HALTON_DEBUG"):
                remove_what_the_run_made()
                fail(str(cause).splitlines()[0])
            raise
        except USER_ERRORS as error:
            if os.environ.get("HALTON_DEBUG"):
                raise
            remove_what_the_run_made()
            fail(str(error).splitlines()[0] if str(error) else repr(error))

    return wrapper


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for but no CUDA GPU is available; allowed here: cpu, auto")
    return device


def resolve_autocast(precision: str, device):
    import torch

    allowed = ("auto", "fp32", "bf16")
    if precision not in allowed:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(allowed)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def condition_kind(cfg: DictConfig):
    """The model config's kind of condition (``model.condition``; class labels when it names none)."""
    from hydra.utils import instantiate

    from halton.conditions import ClassKind

    node = OmegaConf.select(cfg, "model.condition")
    return instantiate(node) if node is not None else ClassKind()


def read_prompts(cfg: DictConfig) -> list[str]:
    """sample.py's prompts: ``prompt``, then ``prompts``, then the lines of ``prompt_file`` (blank lines and lines
    starting with # skipped); checked by :mod:`halton.validation`."""
    prompts = []
    if OmegaConf.select(cfg, "prompt") is not None:
        prompts.append(str(cfg.prompt))
    prompts += [str(p) for p in OmegaConf.select(cfg, "prompts") or []]
    if OmegaConf.select(cfg, "prompt_file"):
        from halton.conditions.text import read_prompt_file

        prompts += read_prompt_file(cfg.prompt_file)
    return prompts


def load_network(net_config, checkpoint: str | None, official_heads: int | None = None):
    """The transformer of a train.py checkpoint (its ``state_dict``: the EMA weights when EMA was on), built from
    ``net_config``, a released Halton-MaskGIT ``.pth`` (then ``official_heads`` is needed), or a model in the Hugging
    Face format (a folder with config.json and model.safetensors, or ``hf://owner/repo``: built from its own
    config). Files may be named ``hf://owner/repo/file``."""
    from hydra.utils import instantiate

    from halton.models.hub import load_pretrained
    from halton.models.official import from_official_checkpoint
    from halton.utils.checkpoint import read_checkpoint
    from halton.utils.hub import is_model_folder

    if is_model_folder(checkpoint):  # a folder of save_pretrained / python -m halton.export, or hf://owner/repo
        return load_pretrained(checkpoint)
    state = read_checkpoint(checkpoint, "checkpoint",
                            "; train.py writes runs/<name>/checkpoints/last.ckpt, or pass checkpoint=PATH")
    if isinstance(state, dict) and "model_state_dict" in state:
        if not official_heads:
            raise ValueError(f"{checkpoint} is a released Halton-MaskGIT checkpoint; give its heads with "
                             "official_heads=N (tiny 6, small 6, base 12, large 16; text-to-image 16)")
        return from_official_checkpoint(checkpoint, official_heads)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{checkpoint} is neither a train.py checkpoint (state_dict) nor a released one "
                         "(model_state_dict)")
    net = instantiate(net_config)
    try:
        net.load_state_dict(model_weights(state))
    except RuntimeError as error:
        detail = str(error).splitlines()
        raise ValueError(f"{checkpoint} does not fit the model config: "
                         f"{' '.join(d.strip() for d in detail[1:3])}") from None
    return net.eval()
