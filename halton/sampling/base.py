"""The MaskGIT sampling loop, shared by every scheduler.

A :class:`Scheduler` decides, at each step, at which positions the model's logits are needed (``candidates``) and
which of them get unmasked (``choose``). Everything else is shared: batched classifier-free guidance (optionally
only inside a time interval), softmax temperature, top-k, seeded sampling, running the output head only at the
candidate positions, and editing (generating only the masked tokens of given codes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from halton.conditions import Condition, as_condition
from halton.models.cache import TrunkCache
from halton.options.sampling import SamplingOptions, check_edit_steps
from halton.sampling.schedules import tokens_per_step
from halton.utils.progress import progress as progress_bar


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
    def start(self, batch: int, height: int, width: int, generator: torch.Generator, device: torch.device,
              masked: torch.Tensor, num_masked: int | None = None) -> Any:
        """Called once before the first step with the tokens to generate (``masked`` [B, N], True where masked:
        everywhere, or the region of an edit; ``num_masked`` of them in every sample, a host value: the largest
        where the samples of an edit mask different numbers); returns per-run state (an order for order-based
        schedulers)."""

    @abstractmethod
    def candidates(self, state: torch.Tensor | None, masked: torch.Tensor, done: int | torch.Tensor, count: int,
                   left: int | None = None) -> torch.Tensor:
        """Positions [B, M] whose logits this step needs. ``masked`` [B, N] is True where still masked, ``done``
        tokens are already unmasked and ``count`` are unmasked by this step. Where the samples of an edit mask
        different numbers of tokens, ``done`` is each sample's [B] (on the device), ``count`` the largest count of
        the step and ``left`` the most tokens any sample still has masked (host values): sample b unmasks the
        first of its candidates up to its own count, and its candidates past those that are still masked are
        padding (any other positions, distinct within the row)."""

    def choose(self, step: int, steps: int, tokens: torch.Tensor, probs: torch.Tensor, count: int,
               generator: torch.Generator, choosable: torch.Tensor | None = None) -> torch.Tensor:
        """Indices [B, count] into the candidates of the tokens unmasked this step (default: all of them).
        ``choosable`` [B, M] (mixed counts, see :meth:`candidates`): True at the candidates still masked; each
        sample's own count of indices comes first and must point at those."""
        return torch.arange(count, device=tokens.device).expand(tokens.shape[0], count)

    def guidance_weight(self, weight: float, step: int, steps: int) -> float:
        """CFG weight at ``step`` (constant by default)."""
        return weight

    def counts(self, num_tokens: int, steps: int, schedule: str, power: float = 0.5, rate: float = 5.0) -> list[int]:
        """Tokens unmasked by each step, summing to ``num_tokens`` (those to generate; default:
        :func:`tokens_per_step`, each >= 1). ``power`` and ``rate``: the poly exponent and the exp/log rate."""
        return tokens_per_step(num_tokens, steps, schedule, power, rate).tolist()

    def recomputed(self, state: Any, masked_at_refresh: torch.Tensor, done_at_refresh: int, needed: int
                   ) -> torch.Tensor:
        """Positions [B, n] a cached local step runs the trunk at (``sample(..., cache_refresh=k)``): the tokens
        decoded since the last full evaluation, whose inputs changed from the mask token, and those whose logits
        the step needs. ``masked_at_refresh`` [B, M - d]: the positions still masked at that evaluation, after
        ``done_at_refresh`` = d decoded tokens; ``needed``: the step needs logits up to the ``needed``-th token in
        decoding order (that of the step's last token; every token on a ``fill_steps`` step). Default: every
        position masked at the evaluation (a Confidence step needs logits at every still-masked one)."""
        return masked_at_refresh

    # True: every position is drawn again at every step and the decoded ones take the new draw (the reference
    # Confidence sampler); the candidates still say where new tokens may be unmasked.
    redraws_decoded: bool = False


class OrderScheduler(Scheduler):
    """Unmasks tokens in a fixed order per sample; logits are computed only at the positions being unmasked."""

    @abstractmethod
    def order(self, batch: int, height: int, width: int, generator: torch.Generator,
              device: torch.device) -> torch.Tensor:
        """Flat positions [B, H*W] in unmasking order."""

    def start(self, batch, height, width, generator, device, masked, num_masked=None):
        order = self.order(batch, height, width, generator, device)  # drawn whatever the mask: same random stream
        # The masked positions first, in their relative order within the full order (a stable sort on "known"),
        # so an edit walks the same order restricted to its region; the known positions, after them, are never
        # reached since the counts sum to the number masked. With everything masked this is the order itself.
        known = ~masked.gather(1, order)
        return order.gather(1, torch.argsort(known.to(torch.uint8), dim=1, stable=True))

    def candidates(self, state, masked, done, count, left=None):
        if not torch.is_tensor(done):
            return state[:, done:done + count]
        # each sample's own slice of its order; past its own count: later positions of the order (padding)
        index = (done[:, None] + torch.arange(count, device=state.device)) % state.shape[1]
        return state.gather(1, index)

    def recomputed(self, state, masked_at_refresh, done_at_refresh, needed):
        # the order is known in advance: decoded since the refresh, then those needed now, one slice of it
        return state[:, done_at_refresh:needed]


@dataclass
class SamplingResult:
    codes: torch.Tensor  # [B, H, W] final codes
    # Trunk forwards per image at each step: 1, or 2 where a CFG pair ran (conditional + unconditional). The
    # head-only work (logits at chosen positions, ``fill_steps``) reuses the step's trunk output and is not counted.
    nfe_per_step: list[int] = field(default_factory=list)
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
    # Trunk cost per image at each step in position-layers: trunk positions (patches and registers) run through a
    # block, summed over blocks and CFG passes. A full evaluation costs (positions x blocks) per pass, a cached local
    # step (``cache_refresh``) only its recomputed positions x blocks. Empty for a model without ``trunk_cost``.
    position_layers_per_step: list[int] = field(default_factory=list)
    # Per step: True where the trunk ran at every position (always without ``cache_refresh``).
    full_per_step: list[bool] = field(default_factory=list)

    @property
    def nfe_per_image(self) -> int:
        """Trunk forwards (network function evaluations) one image cost: 16 steps with guidance in 4 = 20. A cached
        local step counts as a forward too; :attr:`position_layers_per_image` says what it cost."""
        return sum(self.nfe_per_step)

    @property
    def position_layers_per_image(self) -> int:
        """The trunk's cost of one image in position-layers (see ``position_layers_per_step``)."""
        return sum(self.position_layers_per_step)


def check_init_codes(init_codes: torch.Tensor, batch: int, height: int, width: int, codebook_size: int,
                     mask_id: int) -> tuple[torch.Tensor, list[int]]:
    """The masked positions [B, N] of ``init_codes`` [B, H, W] (codes in [0, codebook_size) or ``mask_id``) and
    their number in each sample, a host list (one sync, once per run); every sample masks at least one token."""
    if init_codes.shape != (batch, height, width) or init_codes.dtype != torch.long:
        raise ValueError(f"init_codes of shape {list(init_codes.shape)} ({init_codes.dtype}) do not fit; allowed: "
                         f"torch.long codes of shape {[batch, height, width]} (batch, token grid)")
    flat = init_codes.reshape(batch, height * width)
    masked = flat == mask_id
    bad = ((flat < 0) | (flat >= codebook_size)) & ~masked
    *per_sample, has_bad = torch.cat([masked.sum(1), bad.any().long()[None]]).tolist()
    if has_bad:
        raise ValueError(f"init_codes hold code {int(flat[bad][0])}; allowed: 0 to {codebook_size - 1}, or the mask id "
                         f"{mask_id} where a token is to be generated")
    if max(per_sample) == 0:
        raise ValueError(f"init_codes hold no mask id ({mask_id}); allowed: codes with at least one token to generate")
    if min(per_sample) == 0:
        raise ValueError(f"init_codes sample {per_sample.index(0)} holds no mask id ({mask_id}); allowed: at least "
                         "one token to generate in every sample")
    return masked, per_sample


def masked_positions(masked: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` masked positions [B, count] of each row of ``masked`` [B, N] in increasing order, where every row
    has exactly ``count`` masked: a stable sort puts them first, and ``count`` is known on the host, so unlike
    ``masked.nonzero()`` this never waits for the device."""
    return torch.argsort((~masked).to(torch.uint8), dim=1, stable=True)[:, :count]


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
def sample(model, scheduler: Scheduler, condition: Condition | torch.Tensor, options: SamplingOptions | None = None, *,
           generator: torch.Generator | None = None, return_history: bool = False, fill_steps: tuple[int, ...] = (),
           autocast_dtype: torch.dtype | None = None, progress: bool = False, init_codes: torch.Tensor | None = None,
           **option_values: Any) -> SamplingResult:
    """Generate token grids for ``condition`` (a :class:`halton.conditions.Condition` of any kind, or class labels
    [B]) with ``model`` (any model with ``condition``, ``trunk_conditioned`` and ``logits``).

    CFG mixes ``(1 + w) * cond - w * uncond``, both passes in one batched forward (w = 0: one pass). The softmax
    temperature multiplies the logits: at step i it is ``linspace(temp_min, temp_max, steps)[i] ** temp_pow``,
    halved for the first ``temp_warmup`` steps (the reference Halton sampler's rule; 1 and 0: plain linear).
    ``fill_steps`` (0-based) also returns, after those steps, the codes with the still-masked tokens drawn from
    that step's predictions (their logits are computed only at those steps). ``schedule`` sets the tokens unmasked
    per step (:func:`halton.sampling.schedules.tokens_per_step`); ``schedule_power`` is the ``poly`` exponent and
    ``schedule_rate`` the ``exp``/``log`` rate (eMIGM's 0.5 and 5 by default).

    ``cfg_interval=(t_min, t_max)`` guides only the steps whose time s lies in (t_min, t_max]; the others run the
    conditional pass alone. Time goes from 1 (all masked) to 0: step i runs at s_i = 1 - d_i / M, with d_i the
    tokens decoded before step i (the exact per-step counts) and M the tokens this run generates. None: every step
    (as the scheduler's weight says).

    ``cache_refresh=k`` (context caching, ReCAP): a full trunk evaluation fills a cache of every block's keys and
    values, and the next k - 1 steps are local: the trunk runs only at the tokens decoded since that evaluation and
    at the positions whose logits the step needs (order schedulers: a slice of their order; Confidence: every
    position masked at the evaluation), attending to the cached keys and values elsewhere. A step that turns
    guidance on or off (``cfg_interval``, Confidence's ramp) is always a full evaluation, and so is a local step
    that would run as many positions as a full one (as the model's ``trunk_cost`` says). 1: every step is full, the
    same codes as None (no cache, the default); larger k: cheaper, approximate. ``result.position_layers_per_step``
    shows the trunk cost.

    ``init_codes`` [B, H, W] (editing): the tokens equal to ``model.mask_id`` are generated, every other one is kept
    as it is. Each sample's per-step counts split its own masked count M_b (``scheduler.counts(M_b, steps, schedule,
    ...)``, so steps <= the smallest M_b), order schedulers walk their order restricted to each sample's masked
    positions and Confidence keeps each sample's own count of most confident ones. Samples may mask different
    numbers of tokens (e.g. a batch of inpaintings, each with its own box), except with ``cache_refresh``; when
    they all mask the same number the codes are those of a batch without per-sample counts. None: every token is
    generated.

    The sampling options come as :class:`halton.options.SamplingOptions` (``options``), as keywords (``steps=16,
    cfg_weight=2.0, ...``: its fields, ``seed=None`` meaning 0), or both (the keywords replace the options' values);
    they are checked against the model's token count and codebook.
    """
    height, width = model.grid
    num_tokens, vocab = height * width, model.codebook_size
    if option_values.get("seed", 0) is None:
        option_values.pop("seed")
    options = dataclasses.replace(options or SamplingOptions(), **option_values, num_tokens=num_tokens,
                                  codebook_size=vocab)
    steps, cfg_weight, cfg_interval, top_k = options.steps, options.cfg_weight, options.cfg_interval, options.top_k
    condition = as_condition(condition)
    condition.check(model)
    device = condition.device
    batch = len(condition)
    per_sample = None  # the masked count of each sample (host list) where the samples of an edit differ
    if init_codes is None:
        codes = torch.full((batch, num_tokens), model.mask_id, dtype=torch.long, device=device)
        masked = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
        to_generate = num_tokens
    else:
        init_codes = init_codes.to(device)
        masked, masked_counts = check_init_codes(init_codes, batch, height, width, vocab, model.mask_id)
        codes = init_codes.reshape(batch, num_tokens).clone()
        to_generate, fewest = max(masked_counts), min(masked_counts)
        if fewest == to_generate:
            check_edit_steps(steps, to_generate)
        elif steps > fewest:
            raise ValueError(f"steps={steps} is out of range for init_codes sample {masked_counts.index(fewest)}, "
                             f"which masks {fewest} tokens; allowed: 1 to {fewest} (the fewest masked tokens of "
                             "any sample)")
        if fewest != to_generate:
            per_sample = masked_counts
            if options.cache_refresh is not None:
                raise ValueError(f"cache_refresh={options.cache_refresh} needs the same number of masked tokens in "
                                 f"every sample; these init_codes mask {fewest} to {to_generate}; allowed: "
                                 "cache_refresh=None, or one batch per masked count")
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(options.seed)
    schedule_rule = (steps, options.schedule, options.schedule_power, options.schedule_rate)
    if per_sample is None:
        counts = scheduler.counts(to_generate, *schedule_rule)
    else:
        # Each sample splits its own masked count by the schedule rule: once per distinct count, on the host, once
        # per run (init_codes are known up front), so no step waits for the device. A step's candidates are as wide
        # as its largest count (``counts``); each sample unmasks the first of them up to its own count.
        by_count = {m: scheduler.counts(m, *schedule_rule) for m in sorted(set(per_sample))}
        sample_counts = torch.tensor([by_count[m] for m in per_sample], dtype=torch.long)  # [B, steps]
        sample_done = torch.cumsum(sample_counts, 1) - sample_counts                          # decoded before each step
        counts = sample_counts.amax(0).tolist()
        masked_left = (torch.tensor(per_sample)[:, None] - sample_done).amax(0).tolist()     # most left, per step
        if cfg_interval is not None:  # each sample's own time s = 1 - d / M_b: inside the interval or not
            inside = [[cfg_interval[0] < (m - d) / m <= cfg_interval[1] for m, d in zip(per_sample, done)]
                      for done in sample_done.T.tolist()]
            inside_device = torch.tensor(inside, device=device)                                # [steps, B]
        sample_counts, sample_done = sample_counts.T.to(device), sample_done.T.to(device)      # [steps, B]
    temperatures = step_temperatures(steps, options.temp_min, options.temp_max, options.temp_pow, options.temp_warmup)
    # The positions this run generates [B, M]: where a redrawing scheduler draws at every step (all of them without
    # an edit); the known tokens of an edit are never drawn, so never changed.
    generated = masked.clone()
    everywhere = None
    if scheduler.redraws_decoded:  # mixed counts: as many as the largest, the others padded with known positions
        everywhere = (torch.arange(num_tokens, device=device).expand(batch, num_tokens) if init_codes is None
                      else masked_positions(masked, to_generate))

    def autocast():
        # a new context each time: one torch.autocast object entered again inside itself (the condition is prepared
        # within the trunk's) restores "enabled" on exit, leaving autocast on for the caller's later work
        return (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    # What the trunk takes for the condition (for text: every block's keys and values), computed once per run:
    # alone, and followed by the null condition for the batched CFG pass.
    prepared: dict[bool, Any] = {}

    def conditioning(guided: bool):
        if guided not in prepared:
            drop = torch.arange(2 * batch if guided else batch, device=device) >= batch
            with autocast():
                prepared[guided] = (condition.concat(condition) if guided else condition).prepare(model, drop)
        return prepared[guided]
    state = scheduler.start(batch, height, width, generator, device, masked.clone(), num_masked=to_generate)
    result = SamplingResult(codes=codes)
    done = 0
    cache_refresh, cache, since_refresh, cached_guided = options.cache_refresh, None, 0, None
    masked_at_refresh, done_at_refresh = masked, 0  # set by every full step of a cached run
    trunk_cost = getattr(model, "trunk_cost", None)
    was_training = model.training
    model.eval()
    fill_steps = set(fill_steps)

    def guided_logits(hidden, positions, weight, temperature):
        with autocast():
            if not torch.is_tensor(weight) and weight == 0:
                return model.logits(hidden, positions, vocab).float().mul_(temperature)
            cond, uncond = model.logits(hidden, torch.cat([positions, positions]), vocab).float().chunk(2)
        if torch.is_tensor(weight):  # per sample [B, 1, 1] (mixed counts inside and outside the CFG interval)
            return cond.mul_(1 + weight).sub_(uncond.mul_(weight)).mul_(temperature)
        # (1 + w) * cond - w * uncond, then the temperature, in place
        return cond.mul_(1 + weight).sub_(uncond, alpha=weight).mul_(temperature)

    for step in progress_bar(range(steps), desc=f"sampling ({scheduler.name})", disable=not progress, leave=False):
        count = counts[step]
        if per_sample is None:
            positions = scheduler.candidates(state, masked, done, count)
        else:  # ``count`` is the widest; ``still``: the candidates still masked (the others are padding)
            positions = scheduler.candidates(state, masked, sample_done[step], count, left=masked_left[step])
            still = masked.gather(1, positions)
        weight = scheduler.guidance_weight(cfg_weight, step, steps)
        if cfg_interval is not None and per_sample is None:
            if not cfg_interval[0] < (to_generate - done) / to_generate <= cfg_interval[1]:
                weight = 0.0  # outside the interval: the conditional pass alone (int / int is correctly rounded)
        elif cfg_interval is not None and weight != 0 and not all(inside[step]):  # guided where any is inside
            weight = (inside_device[step].float().mul_(weight).view(batch, 1, 1) if any(inside[step]) else 0.0)
        guided = torch.is_tensor(weight) or weight != 0
        result.nfe_per_step.append(2 if guided else 1)
        batch_codes = torch.cat([codes, codes]) if guided else codes
        full = cache_refresh is None or since_refresh >= cache_refresh or guided != cached_guided
        if not full:
            needed = to_generate if step in fill_steps else done + count
            recompute = (everywhere if scheduler.redraws_decoded else
                         scheduler.recomputed(state, masked_at_refresh, done_at_refresh, needed))
            # a local step that would run as many positions as a full one runs as a full one (exact, and a refresh)
            full = trunk_cost is not None and trunk_cost(recompute.shape[1]) >= trunk_cost(None)
        result.full_per_step.append(full)
        if cache_refresh is None:
            with autocast():
                hidden = model.trunk_conditioned(batch_codes, conditioning(guided))
        elif full:  # fill the cache: [cond; uncond] in one batch, so each half keeps its own keys and values
            cache, since_refresh, cached_guided, done_at_refresh = TrunkCache(), 1, guided, done
            masked_at_refresh = masked_positions(masked, to_generate - done)
            with autocast():
                hidden = model.trunk_conditioned(batch_codes, conditioning(guided), cache=cache)
        else:
            since_refresh += 1
            with autocast():
                hidden = model.trunk_conditioned(batch_codes, conditioning(guided), cache=cache,
                                                 positions=torch.cat([recompute, recompute]) if guided else recompute)
        if trunk_cost is not None:
            result.position_layers_per_step.append(
                (2 if guided else 1) * trunk_cost(None if full else recompute.shape[1]))
        if scheduler.redraws_decoded:  # draw at every generated position; the decoded ones take the new draw
            logits = guided_logits(hidden, everywhere, weight, temperatures[step])
            drawn, drawn_probs, drawn_entropy = _sample_tokens(logits, top_k, generator, entropy=return_history)
            if to_generate < num_tokens or per_sample is not None:  # grid positions (mask id, 0 at known tokens)
                drawn = torch.full_like(codes, model.mask_id).scatter_(1, everywhere, drawn)
                drawn_probs = drawn_probs.new_zeros(codes.shape).scatter_(1, everywhere, drawn_probs)
                if return_history:
                    drawn_entropy = drawn_entropy.new_zeros(codes.shape).scatter_(1, everywhere, drawn_entropy)
                if per_sample is not None:  # the padding drew at known positions: never used
                    drawn.masked_fill_(~generated, model.mask_id)
                    drawn_probs.masked_fill_(~generated, 0.0)
                    if return_history:
                        drawn_entropy.masked_fill_(~generated, 0.0)
            tokens, token_probs = drawn.gather(1, positions), drawn_probs.gather(1, positions)
            entropy = drawn_entropy.gather(1, positions) if return_history else None
            codes = torch.where(generated & ~masked, drawn, codes)
        else:
            logits = guided_logits(hidden, positions, weight, temperatures[step])
            tokens, token_probs, entropy = _sample_tokens(logits, top_k, generator, entropy=return_history)
        if per_sample is None:
            chosen = scheduler.choose(step, steps, tokens, token_probs, count, generator)
            new_positions = positions.gather(1, chosen)
            codes.scatter_(1, new_positions, tokens.gather(1, chosen))
            masked.scatter_(1, new_positions, False)
            unmasked = True
        else:
            chosen = scheduler.choose(step, steps, tokens, token_probs, count, generator, choosable=still)
            new_positions = positions.gather(1, chosen)
            # each sample unmasks the first ``own count`` chosen; a row's positions are distinct, so writing the
            # current values back at the others changes nothing
            unmasked = torch.arange(count, device=device) < sample_counts[step][:, None]
            codes.scatter_(1, new_positions, torch.where(unmasked, tokens.gather(1, chosen),
                                                         codes.gather(1, new_positions)))
            masked.scatter_(1, new_positions, masked.gather(1, new_positions) & ~unmasked)
        done += count
        left = to_generate - done if per_sample is None else masked_left[step + 1] if step + 1 < steps else 0
        if step in fill_steps:
            filled = codes.clone()
            if left > 0:
                rest = masked_positions(masked, left)
                rest_logits = guided_logits(hidden, rest, weight, temperatures[step])
                rest_tokens = _sample_tokens(rest_logits, top_k, generator)[0]
                if per_sample is not None:  # the padding of samples with fewer left: known, kept
                    rest_tokens = torch.where(masked.gather(1, rest), rest_tokens, filled.gather(1, rest))
                filled.scatter_(1, rest, rest_tokens)
            result.filled[step] = filled.view(batch, height, width)
        if return_history:
            chosen_entropy = entropy.gather(1, chosen)
            result.entropy_per_step.append(chosen_entropy.mean(1) if per_sample is None else
                                           (chosen_entropy * unmasked).sum(1) / sample_counts[step].clamp_min(1))
            grid = (batch, height, width)
            sampled = tokens if per_sample is None else torch.where(still, tokens, model.mask_id)
            predictions = (drawn.clone() if scheduler.redraws_decoded else
                           torch.full_like(codes, model.mask_id).scatter_(1, positions, sampled))
            result.codes_per_step.append(codes.clone().view(grid))
            result.predictions_per_step.append(predictions.view(grid))
            result.unmasked_per_step.append(
                torch.zeros_like(masked).scatter_(1, new_positions, unmasked).view(grid))
    model.train(was_training)
    result.codes = codes.view(batch, height, width)
    return result
