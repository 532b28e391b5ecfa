"""Shared plumbing of the entry points: one-line errors for bad input, devices, loading trained weights."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from halton.models.official import from_official_checkpoint, strip_prefixes
from halton.utils.checkpoint import require_file

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
USER_ERRORS = (ValueError, FileNotFoundError, TypeError)
GROUP_ALIASES = {"scheduler": "sampler"}  # evaluate.py's scheduler=NAME picks conf/sampler/NAME.yaml


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_group_choices(argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Refuse ``group=choice`` overrides naming a config that does not exist, in one line, before Hydra starts."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        group_dir = config_dir / GROUP_ALIASES.get(key, key)
        # hydra/* groups also hold Hydra's own choices (e.g. hydra/launcher=submitit_slurm): Hydra checks those.
        if not sep or "." in key or key.startswith("hydra/") or not group_dir.is_dir() or value in ("null", ""):
            continue
        allowed = sorted(p.stem for p in group_dir.glob("*.yaml"))
        choices = value.split(",") if value.count(",") else [value]
        for choice in choices:
            if choice not in allowed:
                fail(f"unknown {key} {choice!r}; allowed: {', '.join(allowed)}")


def entry_point(task):
    """Wrap a Hydra task: bad values stop with one line on stderr and exit code 2 (HALTON_DEBUG=1: traceback)."""

    @functools.wraps(task)
    def wrapper(cfg):
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
    path = require_file(checkpoint, "checkpoint")
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
