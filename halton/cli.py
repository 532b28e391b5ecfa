"""Shared plumbing of the entry points: command-line checks before Hydra starts, one-line errors, devices, loading
trained weights."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
import warnings
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from halton.models.official import from_official_checkpoint, strip_prefixes
from halton.utils.checkpoint import require_file

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
USER_ERRORS = (ValueError, FileNotFoundError, TypeError)
# Spellings of the scheduler choice that earlier versions (or other code bases) used.
SCHEDULER_SPELLINGS = ("sampler", "scheduler_options", "sampler_options")
log = logging.getLogger("halton")
# torch deprecated a pytree check that Lightning still makes at every fit: not the user's concern
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


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


def entry_point(task):
    """Wrap a Hydra task: Python warnings go to the run's log too, and bad values stop with one line on stderr and
    exit code 2 (HALTON_DEBUG=1: the traceback instead)."""

    @functools.wraps(task)
    def wrapper(cfg):
        logging.captureWarnings(True)
        try:
            return task(cfg)
        except InstantiationException as error:
            cause = error.__cause__
            if isinstance(cause, USER_ERRORS) and not os.environ.get("HALTON_DEBUG"):
                fail(str(cause))
            raise
        except USER_ERRORS as error:
            if os.environ.get("HALTON_DEBUG"):
                raise
            fail(str(error).splitlines()[0] if str(error) else repr(error))

    return wrapper


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for but no CUDA GPU is available; allowed here: cpu, auto")
    return device


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    allowed = ("auto", "fp32", "bf16")
    if precision not in allowed:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(allowed)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def load_network(net_config, checkpoint: str | None, official_heads: int | None = None) -> torch.nn.Module:
    """The transformer of a train.py checkpoint (its ``state_dict``: the EMA weights when EMA was on), built from
    ``net_config``, or a released Halton-MaskGIT ``.pth`` (then ``official_heads`` is needed)."""
    path = require_file(checkpoint, "checkpoint",
                        "; train.py writes runs/<name>/checkpoints/last.ckpt, or pass checkpoint=PATH")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state_dict" in state:
        if not official_heads:
            raise ValueError(f"{path} is a released Halton-MaskGIT checkpoint; give its heads with official_heads=N "
                             "(tiny 6, small 6, base 12, large 16)")
        return from_official_checkpoint(path, official_heads)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{path} is neither a train.py checkpoint (state_dict) nor a released one (model_state_dict)")
    weights = {k[len("model."):]: v for k, v in strip_prefixes(state["state_dict"]).items() if k.startswith("model.")}
    net = instantiate(net_config)
    try:
        net.load_state_dict(strip_prefixes(weights))
    except RuntimeError as error:
        detail = str(error).splitlines()
        raise ValueError(f"{path} does not fit the model config: {' '.join(d.strip() for d in detail[1:3])}") from None
    return net.eval()
