"""The MaskGIT sampling loop, shared by every scheduler.

A :class:`Scheduler` decides, at each step, at which positions the model's logits are needed (``candidates``) and
which of them get unmasked (``choose``). Everything else is shared: batched classifier-free guidance, softmax
temperature, top-k, seeded sampling, and running the output head only at the candidate positions.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from halton.conditions import Condition, as_condition
from halton.sampling.schedules import check_schedule, tokens_per_step


class Scheduler(ABC):
    """Which tokens to unmask at each step. Adding a scheduler = one subclass registered in ``SCHEDULERS`` and one
    config in ``conf/scheduler/``. A scheduler keeps its constructor options as attributes of the same names."""

    name: str = ""

    def options(self) -> dict[str, Any]:
        """The constructor options, e.g. ``{"randomize": True}``."""
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    def spec(self) -> dict[str, Any]:
        """Name and options as plain values: ``build_scheduler(**spec)`` makes the same scheduler again."""
        return {"name": self.name, **self.options()}

    def label(self) -> str:
        """The name, followed by the options that differ from their defaults: ``confidence-guidance=constant``."""
        defaults = {key: p.default for key, p in inspect.signature(type(self)).parameters.items()}
        changed = [f"{key}={value}" for key, value in self.options().items() if defaults.get(key) != value]
        return "-".join([self.name, *changed])

    @abstractmethod
    def start(self, batch: int, height: int, width: int, generator: torch.Generator,
              device: torch.device) -> torch.Tensor | None:
        """Called once before the first step; returns per-run state (an order for order-based schedulers)."""

    @abstractmethod
    def candidates(self, state: torch.Tensor | None, masked: torch.Tensor, done: int, count: int) -> torch.Tensor:
        """Positions [B, M] whose logits this step needs. ``masked`` [B, N] is True where still masked, ``done``
        tokens are already unmasked and ``count`` are unmasked by this step."""

    def choose(self, step: int, steps: int, tokens: torch.Tensor, probs: torch.Tensor, count: int,
               generator: torch.Generator) -> torch.Tensor:
        """Indices [B, count] into the candidates of the tokens unmasked this step (default: all of them)."""
        return torch.arange(count, device=tokens.device).expand(tokens.shape[0], count)

    def guidance_weight(self, weight: float, step: int, steps: int) -> float:
        """CFG weight at ``step`` (constant by default)."""
        return weight

    def counts(self, num_tokens: int, steps: int, schedule: str) -> list[int]:
        """Tokens unmasked by each step (default: :func:`tokens_per_step`, each >= 1)."""
        return tokens_per_step(num_tokens, steps, schedule).tolist()

    # True: every position is drawn again at every step and the decoded ones take the new draw (the reference
    # Confidence sampler); the candidates still say where new tokens may be unmasked.
    redraws_decoded: bool = False


class OrderScheduler(Scheduler):
    """Unmasks tokens in a fixed order per sample; logits are computed only at the positions being unmasked."""

    @abstractmethod
    def order(self, batch: int, height: int, width: int, generator: torch.Generator,
              device: torch.device) -> torch.Tensor:
        """Flat positions [B, H*W] in unmasking order."""

    def start(self, batch, height, width, generator, device):
        return self.order(batch, height, width, generator, device)

    def candidates(self, state, masked, done, count):
        return state[:, done:done + count]


@dataclass
class SamplingResult:
    codes: torch.Tensor  # [B, H, W] final codes
    # Per step (when requested): codes after the step (mask id where still masked), the sampled predictions at
    # the positions whose logits were computed (mask id elsewhere), and the positions unmasked by the step.
    codes_per_step: list[torch.Tensor] = field(default_factory=list)
    predictions_per_step: list[torch.Tensor] = field(default_factory=list)
    unmasked_per_step: list[torch.Tensor] = field(default_factory=list)
    # Per step (when requested): mean entropy [B] of the sampling distributions at the tokens unmasked.
    entropy_per_step: list[torch.Tensor] = field(default_factory=list)
    # For each step in ``fill_steps`` (0-based): the codes after that step with every still-masked token filled by
    # a draw from the model's prediction at that step (the "intermediate image" of the paper's Table 4).
    filled: dict[int, torch.Tensor] = field(default_factory=dict)


def check_sampling_args(steps: int, num_tokens: int, cfg_weight: float, temp_min: float, temp_max: float,
                        top_k: int | None, codebook_size: int, temp_pow: float = 1.0, temp_warmup: int = 0) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= num_tokens:
        raise ValueError(f"steps={steps} is out of range; allowed: 1 to {num_tokens} (the number of tokens)")
    if not (math.isfinite(cfg_weight) and cfg_weight >= 0):  # nan passes a plain comparison
        raise ValueError(f"cfg_weight={cfg_weight} is out of range; allowed: >= 0 (0 disables guidance)")
    if not all(math.isfinite(t) and t > 0 for t in (temp_min, temp_max)):
        raise ValueError(f"softmax temperatures must be finite and > 0, got temp_min={temp_min}, temp_max={temp_max}")
    if not (math.isfinite(temp_pow) and temp_pow > 0):
        raise ValueError(f"temp_pow={temp_pow} is out of range; allowed: > 0 (1: the linear temperatures)")
    if not (isinstance(temp_warmup, int) and temp_warmup >= 0):
        raise ValueError(f"temp_warmup={temp_warmup} is out of range; allowed: >= 0 (steps at half temperature)")
    if top_k is not None and not 0 <= top_k <= codebook_size:
        raise ValueError(f"top_k={top_k} is out of range; allowed: 0 (off) to {codebook_size}")


def _sample_tokens(logits: torch.Tensor, top_k: int | None, generator: torch.Generator, entropy: bool = False):
    """Draw one token per row of ``logits`` [..., V] (already scaled by the temperature), by inverse-CDF
    sampling: one uniform draw per row instead of one random number per class (torch.multinomial), which makes
    sampling several times faster over a 16k codebook. Returns the tokens, their probabilities, and the entropy
    of each row's distribution when ``entropy`` (else None). ``logits`` is overwritten."""
    if top_k:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    shifted = logits.sub_(logits.amax(-1, keepdim=True))       # log-weights, max 0
    weights = shifted.exp()
    cdf = torch.cumsum(weights, dim=-1)
    total = cdf[..., -1:]
    uniform = torch.rand(total.shape, generator=generator, device=total.device, dtype=total.dtype)
    # u in [0, total): the first cdf entry above u; zero-weight classes (top-k) have empty intervals.
    threshold = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, threshold, right=True).clamp_max_(cdf.shape[-1] - 1)
    token_probs = (weights.gather(-1, tokens) / total).squeeze(-1)
    row_entropy = None
    if entropy:  # H = log(total) - sum(w * log w) / total, with 0 * log 0 = 0
        weighted = torch.where(weights > 0, weights * shifted, torch.zeros_like(weights)).sum(-1, keepdim=True)
        row_entropy = (total.log() - weighted / total).squeeze(-1)
    return tokens.squeeze(-1), token_probs, row_entropy


def step_temperatures(steps: int, temp_min: float = 1.0, temp_max: float = 1.0, temp_pow: float = 1.0,
                      temp_warmup: int = 0) -> list[float]:
    """The softmax temperature of each step, as the reference Halton sampler computes it:
    ``linspace(temp_min, temp_max, steps)[i] ** temp_pow``, halved for the first ``temp_warmup`` steps."""
    return [t ** temp_pow * (0.5 if i < temp_warmup else 1.0)
            for i, t in enumerate(torch.linspace(temp_min, temp_max, steps).tolist())]


@torch.no_grad()
def sample(model, scheduler: Scheduler, condition: Condition | torch.Tensor, steps: int = 32, cfg_weight: float = 0.0,
           temp_min: float = 1.0, temp_max: float = 1.0, top_k: int | None = None, schedule: str = "arccos",
           generator: torch.Generator | None = None, seed: int | None = None, return_history: bool = False,
           fill_steps: tuple[int, ...] = (), autocast_dtype: torch.dtype | None = None,
           progress: bool = False, temp_pow: float = 1.0, temp_warmup: int = 0) -> SamplingResult:
    """Generate token grids for ``condition`` (a :class:`halton.conditions.Condition` of any kind, or class labels
    [B]) with ``model`` (any model with ``condition``, ``trunk_conditioned`` and ``logits``).

    CFG mixes ``(1 + w) * cond - w * uncond``, both passes in one batched forward (w = 0: one pass). The softmax
    temperature multiplies the logits: at step i it is ``linspace(temp_min, temp_max, steps)[i] ** temp_pow``,
    halved for the first ``temp_warmup`` steps (the reference Halton sampler's rule; 1 and 0: plain linear).
    ``fill_steps`` (0-based) also returns, after those steps, the codes with the still-masked tokens drawn from
    that step's predictions (their logits are computed only at those steps).
    """
    height, width = model.grid
    num_tokens, vocab = height * width, model.codebook_size
    check_sampling_args(steps, num_tokens, cfg_weight, temp_min, temp_max, top_k, vocab, temp_pow, temp_warmup)
    check_schedule(schedule)
    condition = as_condition(condition)
    condition.check(model)
    device = condition.device
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else seed)
    batch = len(condition)
    counts = scheduler.counts(num_tokens, steps, schedule)
    temperatures = step_temperatures(steps, temp_min, temp_max, temp_pow, temp_warmup)
    everywhere = (torch.arange(num_tokens, device=device).expand(batch, num_tokens) if scheduler.redraws_decoded
                  else None)
    codes = torch.full((batch, num_tokens), model.mask_id, dtype=torch.long, device=device)
    masked = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    # What the trunk takes for the condition (for text: every block's keys and values), computed once per run:
    # alone, and followed by the null condition for the batched CFG pass.
    prepared: dict[bool, Any] = {}

    def conditioning(guided: bool):
        if guided not in prepared:
            drop = torch.arange(2 * batch if guided else batch, device=device) >= batch
            with autocast:
                prepared[guided] = (condition.concat(condition) if guided else condition).prepare(model, drop)
        return prepared[guided]
    state = scheduler.start(batch, height, width, generator, device)
    result = SamplingResult(codes=codes)
    done = 0
    was_training = model.training
    model.eval()
    fill_steps = set(fill_steps)

    def guided_logits(hidden, positions, weight, temperature):
        with autocast:
            if weight == 0:
                return model.logits(hidden, positions, vocab).float().mul_(temperature)
            cond, uncond = model.logits(hidden, torch.cat([positions, positions]), vocab).float().chunk(2)
        # (1 + w) * cond - w * uncond, then the temperature, in place
        return cond.mul_(1 + weight).sub_(uncond, alpha=weight).mul_(temperature)

    for step in tqdm(range(steps), desc=f"sampling ({scheduler.name})", disable=not progress, leave=False):
        count = counts[step]
        positions = scheduler.candidates(state, masked, done, count)
        weight = scheduler.guidance_weight(cfg_weight, step, steps)
        guided = weight != 0
        with autocast:
            hidden = model.trunk_conditioned(torch.cat([codes, codes]) if guided else codes, conditioning(guided))
        if scheduler.redraws_decoded:  # draw at every position; the decoded ones take the new draw
            logits = guided_logits(hidden, everywhere, weight, temperatures[step])
            drawn, drawn_probs, drawn_entropy = _sample_tokens(logits, top_k, generator, entropy=return_history)
            tokens, token_probs = drawn.gather(1, positions), drawn_probs.gather(1, positions)
            entropy = drawn_entropy.gather(1, positions) if return_history else None
            codes = torch.where(masked, codes, drawn)
        else:
            logits = guided_logits(hidden, positions, weight, temperatures[step])
            tokens, token_probs, entropy = _sample_tokens(logits, top_k, generator, entropy=return_history)
        chosen = scheduler.choose(step, steps, tokens, token_probs, count, generator)
        new_positions = positions.gather(1, chosen)
        codes.scatter_(1, new_positions, tokens.gather(1, chosen))
        masked.scatter_(1, new_positions, False)
        done += count
        if step in fill_steps:
            filled = codes.clone()
            if done < num_tokens:
                rest = masked.nonzero()[:, 1].view(batch, -1)
                rest_logits = guided_logits(hidden, rest, weight, temperatures[step])
                filled.scatter_(1, rest, _sample_tokens(rest_logits, top_k, generator)[0])
            result.filled[step] = filled.view(batch, height, width)
        if return_history:
            result.entropy_per_step.append(entropy.gather(1, chosen).mean(1))
            grid = (batch, height, width)
            predictions = (drawn.clone() if scheduler.redraws_decoded else
                           torch.full_like(codes, model.mask_id).scatter_(1, positions, tokens))
            result.codes_per_step.append(codes.clone().view(grid))
            result.predictions_per_step.append(predictions.view(grid))
            result.unmasked_per_step.append(
                torch.zeros_like(masked).scatter_(1, new_positions, True).view(grid))
    model.train(was_training)
    result.codes = codes.view(batch, height, width)
    return result
