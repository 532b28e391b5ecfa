"""The typed reads every option object uses: each returns the value or raises :class:`Invalid`, one line that names
``key=value`` and says what is allowed. Standard library only."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_prefix: ContextVar[str] = ContextVar("prefix", default="")


class Invalid(ValueError):
    """A value the run cannot use; the message is the one line the user sees."""


@contextmanager
def under(prefix: str):
    """Name the keys checked inside as they sit in a config: ``with under("model."): MaskingOptions(...)`` says
    ``model.t_min=...``."""
    token = _prefix.set(_prefix.get() + prefix)
    try:
        yield
    finally:
        _prefix.reset(token)


def key(name: str) -> str:
    """``name`` as the config spells it (with the prefix of :func:`under`)."""
    return _prefix.get() + name


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f">= {low}" if low is not None else (f"<= {high}" if high is not None else "any whole number")


def _bounds(low, high, above, below) -> str:
    parts = [f">= {low:g}" if low is not None else "", f"> {above:g}" if above is not None else "",
             f"<= {high:g}" if high is not None else "", f"< {below:g}" if below is not None else ""]
    return " and ".join(p for p in parts if p) or "any finite number"


def integer(name: str, value: Any, low: int | None = None, high: int | None = None, optional: bool = False,
            note: str = "") -> int | None:
    """A whole number in [low, high]; ``note`` explains the range."""
    if value is None and optional:
        return None
    allowed = f"{_range(low, high)}{note}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{key(name)}={value!r} is not a whole number; allowed: {allowed}{' or null' if optional else ''}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise Invalid(f"{key(name)}={value} is out of range; allowed: {allowed}")
    return value


def shown(value: Any) -> Any:
    """A number as the command line wrote it: a typed config holds ``temp_min=0`` as 0.0."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else value


def number(name: str, value: Any, low: float | None = None, high: float | None = None, above: float | None = None,
           below: float | None = None, optional: bool = False, note: str = "") -> float | None:
    """A finite number with ``low <= value <= high`` and ``above < value < below``."""
    if value is None and optional:
        return None
    bounds = _bounds(low, high, above, below) + note
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{key(name)}={value!r} is not a number; allowed: {bounds}{' or null' if optional else ''}")
    if not math.isfinite(value):
        raise Invalid(f"{key(name)}={value} is not finite; allowed: {bounds}")
    if ((low is not None and value < low) or (high is not None and value > high)
            or (above is not None and value <= above) or (below is not None and value >= below)):
        raise Invalid(f"{key(name)}={shown(value)} is out of range; allowed: {bounds}")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{key(name)}={value!r} is not a boolean; allowed: true, false")
    return value


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise Invalid(f"{key(name)}={value!r} is not one of the choices; allowed: {', '.join(allowed)}")
    return value


SEED_RANGE = (0, 2**32 - 1)  # what torch and numpy accept


def seed(value: Any, name: str = "seed") -> int:
    """A random seed in :data:`SEED_RANGE`."""
    return integer(name, value, *SEED_RANGE)


def from_config(kind: type, node: Any, **limits):
    """The option dataclass ``kind`` from the keys of a config node (a DictConfig or dict) that it knows;
    ``limits``: its init-only values."""
    from omegaconf import OmegaConf

    values = {f.name: node[f.name] for f in dataclasses.fields(kind) if f.name in node}
    values = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}
    return kind(**values, **limits)


def extra(what: str, name: str, modules: tuple[str, ...]) -> None:
    """Refuse ``what`` (``logger=wandb``) when none of ``modules`` is installed: the optional extra ``name`` of
    pyproject.toml installs the first."""
    if not any(importlib.util.find_spec(module) for module in modules):
        raise Invalid(f"{what} needs {modules[0]}, which the extra [{name}] installs: pip install -e '.[{name}]' "
                      f"(in the clone) or pip install {modules[0]}")
