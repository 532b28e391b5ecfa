"""The sampling options of ``sample()``, sample.py, evaluate.py and the app (the config group ``conf/sampling``),
and the rules of their values."""

# ruff: noqa: UP006, UP035, UP045  (OmegaConf reads these annotations to type the config keys)
from __future__ import annotations

import dataclasses
import math
from dataclasses import InitVar, dataclass
from typing import Any, List, Optional

from halton.options.rules import Invalid, choice, from_config, integer, key, number, seed, shown

SCHEDULES = ("arccos", "cosine", "linear", "square", "root", "poly", "exp", "log")


def check_schedule(schedule: str, power: float = 0.5, rate: float = 5.0,
                   names: tuple[str, str, str] = ("schedule", "schedule_power", "schedule_rate")) -> str:
    """A schedule of :mod:`halton.sampling.schedules` with its poly exponent and exp/log rate; ``names``: how the
    caller calls the three values."""
    choice(names[0], schedule, SCHEDULES)
    number(names[1], power, above=0, note=" (the poly exponent)")
    number(names[2], rate, above=0, note=" (the exp and log rate)")
    return schedule


# The bounds of the numeric sampling options, as rules.number and rules.integer take them (low, high: inclusive;
# above: exclusive); steps is also at most the number of tokens and top_k the codebook size, when known. The app's
# number fields are bounded by them.
RANGES = {"steps": {"low": 1}, "cfg_weight": {"low": 0}, "temp_min": {"above": 0}, "temp_max": {"above": 0},
          "temp_pow": {"above": 0}}


def check_steps(steps: Any, num_tokens: int | None = None) -> int:
    """Steps of a sampling run: each unmasks at least one of the ``num_tokens`` tokens (when known)."""
    return integer("steps", steps, RANGES["steps"]["low"], num_tokens,
                   note=" (the number of tokens)" if num_tokens else "")


def check_edit_steps(steps: int, masked: int) -> int:
    """Steps of an edit: each unmasks at least one of its ``masked`` tokens."""
    if steps > masked:
        raise Invalid(f"{key('steps')}={steps} is out of range for an edit of {masked} tokens; allowed: 1 to {masked} "
                      "(the number of masked tokens)")
    return steps


def check_top_k(value: Any, codebook_size: int | None = None) -> int | None:
    """Sample among the ``top_k`` likeliest codes (None or 0: all), at most the codebook (when known)."""
    return integer("top_k", value, 0, codebook_size, optional=True, note=" (0: off)" if codebook_size is None else "")


# The sampler multiplies the float32 logits by (1 + cfg_weight) * temperature (the reference's convention); below
# this bound, logits up to 1e8 in magnitude stay finite (float32 holds up to 3.4e38).
LOGIT_SCALE_LIMIT = 1e30


def check_logit_scale(cfg_weight: float, temp_min: float, temp_max: float, temp_pow: float) -> None:
    """The largest factor a step multiplies the logits by, (1 + cfg_weight) * max(temp_min, temp_max) ** temp_pow,
    must keep them finite; refused naming the value that makes it largest. In logarithms, so nothing overflows."""
    hottest = max(temp_min, temp_max)
    guidance, temperature = math.log1p(cfg_weight), temp_pow * math.log(hottest)
    scale = guidance + temperature
    if scale <= math.log(LOGIT_SCALE_LIMIT):
        return
    if guidance >= temperature:
        name, value = "cfg_weight", cfg_weight
    elif temp_pow > 1 and math.log(hottest) <= math.log(LOGIT_SCALE_LIMIT) - guidance:
        name, value = "temp_pow", temp_pow  # the temperatures alone would pass
    else:
        name, value = ("temp_max", temp_max) if temp_max >= temp_min else ("temp_min", temp_min)
    product = f"{math.exp(scale):.3g}" if scale < 709 else f"about 1e{scale / math.log(10):.0f}"
    raise Invalid(f"{key(name)}={shown(value)} scales the logits by (1 + cfg_weight) * temperature ** temp_pow = "
                  f"{product} (cfg_weight={shown(cfg_weight)}, temperatures up to {shown(hottest)}, temp_pow="
                  f"{shown(temp_pow)}); allowed: a product up to {LOGIT_SCALE_LIMIT:.0e}, so that float32 logits "
                  "stay finite")


def check_cfg_interval(value: Any) -> tuple[float, float] | None:
    """None (always guided), or (t_min, t_max) as floats with 0 <= t_min < t_max <= 1."""
    if value is None:
        return None
    try:
        low, high = (float(t) for t in value)
        ok = not any(isinstance(t, (bool, str)) for t in value) and 0 <= low < high <= 1  # nan fails it
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise Invalid(f"{key('cfg_interval')}={value!r} is not an interval; allowed: null (always guided) or "
                      "[t_min, t_max] with 0 <= t_min < t_max <= 1, e.g. [0.1, 0.3]")
    return low, high


@dataclass(frozen=True)
class SamplingOptions:
    """How ``sample()`` draws: steps, classifier-free guidance (``cfg_weight``, only inside ``cfg_interval`` when
    given), the softmax temperature ``linspace(temp_min, temp_max, steps)[i] ** temp_pow`` (halved for the first
    ``temp_warmup`` steps), ``top_k``, the tokens-per-step ``schedule`` (with the poly exponent and exp/log rate)
    and the seed; ``cache_refresh`` (None: off) caches the trunk's keys and values between full evaluations (see
    :func:`halton.sampling.sample`). ``num_tokens`` and ``codebook_size`` (the model's, when known) bound ``steps``
    and ``top_k``."""

    steps: int = 32
    cfg_weight: float = 0.0
    cfg_interval: Optional[List[float]] = None
    temp_min: float = 1.0
    temp_max: float = 1.0
    temp_pow: float = 1.0
    temp_warmup: int = 0
    top_k: Optional[int] = None
    schedule: str = "arccos"
    schedule_power: float = 0.5
    schedule_rate: float = 5.0
    seed: int = 0
    cache_refresh: Optional[int] = None
    num_tokens: InitVar[Optional[int]] = None
    codebook_size: InitVar[Optional[int]] = None

    def __post_init__(self, num_tokens: int | None, codebook_size: int | None) -> None:
        check_steps(self.steps, num_tokens)
        number("cfg_weight", self.cfg_weight, **RANGES["cfg_weight"], note=" (0 disables guidance)")
        for name in ("temp_min", "temp_max", "temp_pow"):
            number(name, getattr(self, name), **RANGES[name])
        check_logit_scale(self.cfg_weight, self.temp_min, self.temp_max, self.temp_pow)
        integer("temp_warmup", self.temp_warmup, 0, self.steps)
        check_top_k(self.top_k, codebook_size)
        check_schedule(self.schedule, self.schedule_power, self.schedule_rate)
        object.__setattr__(self, "cfg_interval", check_cfg_interval(self.cfg_interval))
        seed(self.seed)
        integer("cache_refresh", self.cache_refresh, 1, optional=True,
                note=" (a full trunk evaluation every k steps, cached local steps between; 1: exact; null: off)")

    def fit(self, num_tokens: int, codebook_size: int) -> SamplingOptions:
        """These options checked against a model's token count and codebook."""
        return dataclasses.replace(self, num_tokens=num_tokens, codebook_size=codebook_size)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, cfg, num_tokens: int | None = None, codebook_size: int | None = None) -> SamplingOptions:
        """The options an entry point's composed config holds (its top-level keys, conf/sampling)."""
        return from_config(cls, cfg, num_tokens=num_tokens, codebook_size=codebook_size)
