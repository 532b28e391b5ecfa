"""Shared plumbing of the entry points: the checks that run before Hydra starts (spellings, then every value of
the composed config, then the input files), one-line errors, cleaning up after a failed run, devices (checkpoints
are read, checked and loaded by :mod:`halton.models.loading`). Importing this module imports no torch: a bad value
is answered before anything heavy loads."""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from halton.help import COMMANDS, choices
from halton.utils.run_lock import RunFolderInUse, RunFolderLock, launching_process
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


def fail(message: str, status: int = 2) -> None:
    """Stop with ``error: message`` as the one line on stderr (also in the run's log file once Hydra has set up
    logging), exit code 2 (or ``status``)."""
    if logging.getLogger().handlers:
        log.error("error: %s", message)
    else:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


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
    experiments and other ``@package _global_`` configs add."""
    keys, groups = _keys_of(config_dir / f"{config_name}.yaml")
    groups = {g for g in groups if not g.startswith("hydra")}
    global_configs = [config_dir / group / f"{name}.yaml" for group in groups for name in choices(group, config_dir)]
    for path in global_configs:  # the experiments, and the sampling options (conf/sampling)
        if path.read_text().startswith("# @package _global_"):
            keys |= _keys_of(path)[0]
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
            raise Invalid(f"unknown option {arg}; use {use} (scheduler=NAME picks one of {schedulers}, "
                          "scheduler.OPTION=value sets its options)")
        if key.startswith("+"):
            continue  # adds a key on purpose
        if top == "scheduler" and dot:
            check_scheduler_option(rest, argv, config_dir)
        if top not in keys:
            raise Invalid(unknown_key(arg, top, own_top_keys(config_name, config_dir), config_name, addable=True))
        if dot or top not in groups or "(" in value:
            continue
        allowed = choices(top, config_dir)
        if top == "experiment" and value in ("", "null"):
            raise Invalid(f"experiment={value} leaves the run without an experiment; allowed: {', '.join(allowed)}")
        for choice in value.split(","):
            if choice not in allowed and choice not in ("", "null"):
                raise Invalid(f"unknown {top} {choice!r}; allowed: {', '.join(allowed)}")


def own_top_keys(config_name: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The top-level keys and config groups an entry point has itself (:mod:`halton.help`), in file order: what its
    unknown-key errors suggest and list (the keys experiments add for other entry points are accepted, not listed)."""
    from halton.help import own_groups, own_keys

    return list(dict.fromkeys([k.split(".")[0] for k in own_keys(config_name, config_dir)]
                              + list(own_groups(config_name, config_dir))))


def closest(name: str, candidates: list[str]) -> list[str]:
    """The candidates a mistyped key most likely meant, best first: the closest spelling (difflib) and the keys
    it begins (cfg: cfg_weight, cfg_interval) or is a word of (weight: cfg_weight); at most three."""
    similar = difflib.get_close_matches(name, candidates, n=1)
    related = [c for c in candidates if c.startswith(name) or name in c.split("_")]
    ratio = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in similar + related}
    return sorted(ratio, key=lambda c: (c not in similar, -ratio[c]))[:3]


def unknown_key(arg: str, key: str, candidates: list[str], config_name: str, addable: bool) -> str:
    """The line for an override naming a key the config lacks: the closest of ``candidates`` (the keys beside it),
    then all of them (the entry point's own, see :func:`own_top_keys`), and ``+key=value`` when Hydra would add it there (``addable``: its parent is a plain mapping)."""
    name, _, value = arg.partition("=")
    parent, _, leaf = key.rpartition(".")
    candidates = [c for c in candidates if not c.startswith("_")]  # _target_: not an option
    suggestions = [f"{parent}.{c}" if parent else c for c in closest(leaf, candidates)]
    hint = (f"did you mean {', '.join(suggestions[:-1])}{' or ' if len(suggestions) > 1 else ''}{suggestions[-1]}? "
            if suggestions else "")
    command = COMMANDS.get(config_name, config_name).split()[-1]  # sample.py, halton.app
    listed = ", ".join(f"{parent}.{c}" if parent else c for c in candidates)
    unread = "" if parent else f", which {command} does not read"
    add = f"; +{name.lstrip('+~')}={value} would add it as a new key{unread}" if addable else ""
    return f"unknown option {arg}: there is no key {key!r}; {hint}allowed: {listed}{add}"


def refused_as_unknown(error: Exception, cell: list[str], config_name: str) -> None:
    """An override of a key the composed config does not have (Hydra: "Could not override 'num_images'"): raise
    :func:`unknown_key`'s line, with the keys beside it in the config composed without that override."""
    from hydra import compose
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = error.__cause__
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or "not in struct" not in str(cause):
        return
    key = str(getattr(cause, "full_key", ""))
    arg = next((a for a in cell if a.partition("=")[0].lstrip("+~") == key), None)
    if arg is None:
        return
    parent_key = key.rpartition(".")[0]
    if not parent_key:
        raise Invalid(unknown_key(arg, key, own_top_keys(config_name), config_name, addable=True))
    cfg = compose(config_name, overrides=[a for a in cell if a != arg])
    parent = OmegaConf.select(cfg, parent_key, throw_on_resolution_failure=False)
    if not isinstance(parent, DictConfig):
        return
    addable = OmegaConf.get_type(parent) is dict  # Hydra adds keys to a plain mapping, not to a typed schema's
    raise Invalid(unknown_key(arg, key, [str(k) for k in parent], config_name, addable))


def check_scheduler_option(option: str, argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """``scheduler.OPTION=value`` names an option of the chosen scheduler(s) (default: halton)."""
    chosen = [a.partition("=")[2] for a in argv if a.partition("=")[0].lstrip("+~") == "scheduler"]
    for name in (chosen[-1] if chosen else "halton").split(","):
        path = config_dir / "scheduler" / f"{name}.yaml"
        options = sorted(set(OmegaConf.load(path)) - {"_target_"}) if path.is_file() else None
        if options is not None and option.split(".")[0] not in options:
            raise Invalid(f"scheduler.{option} is not an option of the {name} scheduler; allowed: "
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
    from hydra.errors import ConfigCompositionException, OverrideParseException

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
            try:
                cfg = compose(config_name, overrides=cell, return_hydra_config=True)
            except ConfigCompositionException as error:
                refused_as_unknown(error, cell, config_name)
                refused_by_schema(error, cell, config_name)
                raise
            HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.experiment} in name
            configs.append(cfg)
    return configs


def refused_by_schema(error: Exception, cell: list[str], config_name: str) -> None:
    """An override of the wrong type, refused by an option schema when the config was composed (``steps=3.5``):
    raise the option object's own message, the config being composed without it and given the value as typed."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    refused = str(getattr(error.__cause__, "full_key", None))  # the key, or an item of it: cfg_interval[0]
    matches = [a for a in cell if re.fullmatch(rf"{re.escape(a.partition('=')[0].lstrip('+~'))}([.\[].*)?", refused)]
    if not matches:
        return
    arg = max(matches, key=lambda a: len(a.partition("=")[0]))  # model.lr=x rather than model=c2i_xl
    key = arg.partition("=")[0].lstrip("+~")
    cfg = compose(config_name, overrides=[a for a in cell if a != arg], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    untyped = OmegaConf.create(OmegaConf.to_container(cfg))
    OmegaConf.update(untyped, key, OverridesParser.create().parse_override(arg).value(), force_add=True)
    validate(untyped, config_name)


def check_inputs(cfg: DictConfig, entry: str) -> None:
    """The checks that need torch: the checkpoints a run reads (readable, weights only, of this configuration),
    a GPU where one is asked for, and the scheduler's own options."""
    import torch
    from hydra.utils import instantiate

    from halton.memory import check_request
    from halton.models import loading
    from halton.utils.checkpoint import read_checkpoint
    from halton.utils.pixels import open_image

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
        loading.check_fits(loading.read(cfg.checkpoint), cfg)
    if entry == "train":
        if isinstance(OmegaConf.select(cfg, "model.sample_grid.scheduler"), DictConfig):
            instantiate(cfg.model.sample_grid.scheduler)
        if cfg.ckpt_path:
            loading.check_fits(loading.read(cfg.ckpt_path, "ckpt_path"), cfg)
        elif cfg.resume:
            path, state = resume_candidate(cfg, announce=False)
            if path:
                loading.check_fits(loading.Checkpoint.of(state, path), cfg)
    for key in ("vq_checkpoint", "inception_weights"):
        if OmegaConf.select(cfg, key):
            read_checkpoint(OmegaConf.select(cfg, key), key)
    if entry in ("sample", "evaluate", "train"):
        check_request(cfg, entry)
    several = [f"edit.{name}.{index}" for name in ("images", "masks")
               for index in range(len(OmegaConf.select(cfg, f"edit.{name}") or ()))] if entry == "sample" else []
    for key in ("edit.image", "edit.mask", *several):  # their size from the header, before any pixel is decoded
        if entry == "sample" and OmegaConf.select(cfg, key):
            open_image(OmegaConf.select(cfg, key), f"{key}={OmegaConf.select(cfg, key)}").close()


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


def preflight(argv: list[str], config_name: str) -> list[DictConfig] | None:
    """The entry point's checks of a command line, in order: spellings, then every run's composed config
    (:func:`halton.validation.validate`), then the inputs (:func:`check_inputs`). Returns the configs; a bad value
    raises :class:`Invalid` with the one line the user sees."""
    from hydra.errors import InstantiationException

    try:
        check_overrides(argv, config_name)
        configs = composed_runs(argv, config_name)
        for cfg in configs or []:
            validate(cfg, config_name)
        for cfg in configs or []:
            check_inputs(cfg, config_name)
        return configs
    except Invalid:
        raise
    except USER_ERRORS as error:  # raised by code the checks call (a device, a checkpoint)
        raise Invalid(str(error).splitlines()[0]) from error
    except InstantiationException as error:  # a scheduler refusing its options
        if not isinstance(error.__cause__, USER_ERRORS) or os.environ.get("HALTON_DEBUG"):
            raise
        raise Invalid(str(error.__cause__).splitlines()[0]) from error
    except Exception as error:  # noqa: BLE001  Hydra's composition errors: one line too
        if os.environ.get("HALTON_DEBUG"):
            raise
        raise Invalid(str(error).strip().splitlines()[0]) from error


def run(main, config_name: str, argv: list[str] | None = None) -> None:
    """Run an entry point: refuse bad spellings, bad values and bad input files in one line (exit 2) before Hydra
    makes a run folder (:func:`preflight`), then hand over to Hydra's ``main``."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        configs = preflight(argv, config_name)
    except Invalid as error:
        fail(str(error))
    lock = contextlib.nullcontext()
    if configs and len(configs) == 1 and "-m" not in argv and "--multirun" not in argv:
        run_dir = Path(str(configs[0].hydra.run.dir)).absolute()
        _before_run.update(top=next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None),
                           run_dir=run_dir, files=set(run_dir.rglob("*")) if run_dir.is_dir() else set())
        if config_name == "train" and launching_process():  # one run per run folder, before Hydra writes there
            try:
                lock = RunFolderLock(run_dir).acquire()
            except RunFolderInUse as error:
                fail(str(error))
            except OSError as error:  # no room for the lock's owner record: the disk is full
                full = disk_full(error, configs[0])
                if full is None:
                    raise
                fail(str(full))
    try:
        with lock:
            main()
    except KeyboardInterrupt:  # Ctrl-C outside training: files are written whole (renamed into place) or not at all
        fail("stopped by Ctrl-C (SIGINT)", status=130)


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
        except Exception as error:  # a full disk, however deep the write (torch, Lightning): one line, exit 2
            full = disk_full(error, cfg)
            if full is None or os.environ.get("HALTON_DEBUG"):
                raise
            fail(str(full))  # the run's files stay: what it saved before is intact, and a rerun resumes

    return wrapper


# The options that choose where an entry point writes, most specific first: a full disk's message names the first
# that holds the file that could not be written.
OUTPUT_KEYS = ("out_dir", "out", "results", "paths.runs_dir", "paths.data_dir", "paths.root_dir")


def disk_full(error: BaseException, cfg: DictConfig):
    """The :class:`~halton.utils.files.DiskFull` behind ``error`` (a write that failed for want of space), naming
    the option that would write it elsewhere; None for any other error."""
    from hydra.core.hydra_config import HydraConfig

    from halton.utils.files import as_disk_full

    full = as_disk_full(error)
    if full is None:
        return None
    # a write that did not name its file (a log): it was in the run folder
    path = (full.path or Path(HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else ".")).absolute()
    for key in OUTPUT_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if isinstance(value, str) and value and Path(value).absolute() in (path, *path.parents):
            return full.where(f"write elsewhere with {key}={'FILE' if key == 'results' else 'DIR'}")
    return full


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for but no CUDA GPU is available; allowed here: cpu, auto")
    return device


def resolve_autocast(precision: str, device):
    """The autocast dtype of a checked ``precision`` (an option object's: auto, fp32, bf16) on ``device``."""
    import torch

    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


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
