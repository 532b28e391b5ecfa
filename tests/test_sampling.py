import pytest
import torch

import halton.sampling.base as sampling_base
from halton.models import MaskTransformer
from halton.sampling import (ConfidenceScheduler, HaltonScheduler, RandomScheduler, build_scheduler, halton_order,
                             sample, tokens_per_step)


class StubModel(torch.nn.Module):
    """Logits that depend only on the position and on whether the pass is conditional; records every call."""

    def __init__(self, height=4, width=4, codebook_size=6, num_classes=3, cond_logits=None, uncond_logits=None):
        super().__init__()
        self.grid, self.codebook_size, self.mask_id, self.num_classes = (height, width), codebook_size, codebook_size, num_classes
        n = height * width
        generator = torch.Generator().manual_seed(0)
        self.cond_logits = cond_logits if cond_logits is not None else torch.randn(n, codebook_size + 1, generator=generator)
        self.uncond_logits = uncond_logits if uncond_logits is not None else torch.randn(n, codebook_size + 1, generator=generator)
        self.trunk_batches, self.head_positions, self.inputs = [], [], []

    def condition(self, labels, drop):
        return drop

    def trunk_conditioned(self, codes, drop):
        self.trunk_batches.append(codes.shape[0])
        self.inputs.append(codes.clone())
        table = torch.where(drop[:, None, None], self.uncond_logits, self.cond_logits)
        return table  # the "hidden state" is the logit table itself

    def logits(self, hidden, positions=None, num_classes=None):
        self.head_positions.append(positions.clone())
        out = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return out[..., :num_classes]


SCHEDULERS = [HaltonScheduler(randomize=False), HaltonScheduler(), ConfidenceScheduler(), RandomScheduler()]
IDS = ["halton", "halton-randomized", "confidence", "random"]


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=IDS)
@pytest.mark.parametrize("steps", [1, 3, 8, 16])
def test_every_token_unmasked_exactly_once_and_never_changed(scheduler, steps):
    model = StubModel()
    result = sample(model, scheduler, torch.tensor([0, 1, 2, 1, 0]), steps=steps, cfg_weight=1.5,
                    seed=3, return_history=True)
    unmasked = torch.stack(result.unmasked_per_step)  # [steps, B, H, W]
    assert torch.equal(unmasked.sum(0), torch.ones(5, 4, 4, dtype=torch.long))
    counts = tokens_per_step(16, steps).tolist()
    assert unmasked.flatten(2).sum(-1).tolist() == [[c] * 5 for c in counts]
    assert (result.codes != model.mask_id).all() and result.codes.max() < model.codebook_size
    for before, after in zip(result.codes_per_step, result.codes_per_step[1:]):
        decoded = before != model.mask_id
        assert torch.equal(after[decoded], before[decoded])  # a decoded token never changes
    # The model sees exactly the codes decoded so far.
    assert (model.inputs[0] == model.mask_id).all()


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=IDS)
def test_seed_reproducibility(scheduler):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    first = sample(StubModel(), scheduler, labels, steps=5, seed=11).codes
    again = sample(StubModel(), scheduler, labels, steps=5, seed=11).codes
    other = sample(StubModel(), scheduler, labels, steps=5, seed=12).codes
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(sample(StubModel(), scheduler, labels, steps=5, generator=generator).codes, first)


def test_halton_unmasks_in_halton_order():
    result = sample(StubModel(8, 8), HaltonScheduler(randomize=False), torch.tensor([0, 1]), steps=8,
                    return_history=True)
    order, done = halton_order(8, 8), 0
    for count, unmasked in zip(tokens_per_step(64, 8).tolist(), result.unmasked_per_step):
        expected = torch.zeros(64, dtype=torch.bool)
        expected[order[done:done + count]] = True
        assert torch.equal(unmasked[0].flatten(), expected) and torch.equal(unmasked[1].flatten(), expected)
        done += count


def test_randomized_halton_rolls_each_sample():
    generator = torch.Generator().manual_seed(5)
    orders = HaltonScheduler().order(6, 8, 8, generator, torch.device("cpu"))
    base = halton_order(8, 8)
    shifts = []
    for row in orders:
        matches = [k for k in range(64) if torch.equal(torch.roll(base, k), row)]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 1


def test_random_scheduler_orders_are_independent_permutations():
    orders = RandomScheduler().order(4, 4, 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    for row in orders:
        assert sorted(row.tolist()) == list(range(16))
    assert len({tuple(row.tolist()) for row in orders}) == 4


def test_head_runs_only_where_needed():
    for scheduler, expected in [(HaltonScheduler(), "step"), (RandomScheduler(), "step"),
                                (ConfidenceScheduler(), "masked")]:
        model = StubModel()
        sample(model, scheduler, torch.tensor([0, 1]), steps=4, cfg_weight=2.0)
        counts = tokens_per_step(16, 4).tolist()
        remaining = [16 - sum(counts[:i]) for i in range(4)]
        want = counts if expected == "step" else remaining
        assert [p.shape[1] for p in model.head_positions] == want


def test_cfg_formula_and_single_batched_pass(monkeypatch):
    captured = []
    original = sampling_base._sample_tokens

    def spy(logits, top_k, generator, **kwargs):
        captured.append(logits.clone())
        return original(logits, top_k, generator, **kwargs)

    monkeypatch.setattr(sampling_base, "_sample_tokens", spy)
    model = StubModel()
    w = 1.5
    sample(model, HaltonScheduler(), torch.tensor([0, 2]), steps=4, cfg_weight=w)
    assert model.trunk_batches == [4] * 4  # conditional and unconditional halves in one forward
    for positions, logits in zip(model.head_positions, captured):
        pos = positions[:2]
        expected = (1 + w) * model.cond_logits[pos][..., :6] - w * model.uncond_logits[pos][..., :6]
        torch.testing.assert_close(logits, expected)

    model, captured[:] = StubModel(), []
    sample(model, HaltonScheduler(), torch.tensor([0, 2]), steps=4, cfg_weight=0.0)
    assert model.trunk_batches == [2] * 4  # w = 0: one pass
    torch.testing.assert_close(captured[0], model.cond_logits[model.head_positions[0]][..., :6])


def test_cfg_changes_the_winning_token():
    # cond prefers token 0 by 1, uncond prefers it by 3: (1+w)*1 - w*3 = 1 - 2w flips sign at w = 0.5.
    cond = torch.zeros(16, 3); cond[:, 0] = 1.0
    uncond = torch.zeros(16, 3); uncond[:, 0] = 3.0
    for w, token in [(0.0, 0), (0.25, 0), (1.0, 1), (2.0, 1)]:
        model = StubModel(codebook_size=2, cond_logits=cond, uncond_logits=uncond)
        codes = sample(model, HaltonScheduler(), torch.tensor([0, 1]), steps=4, cfg_weight=w,
                       temp_min=200.0, temp_max=200.0).codes
        if token == 1:  # the two remaining logits tie at 0: tokens 1 and 2 are both excluded
            assert (codes != 0).float().mean() > 0.99
        else:
            assert (codes == 0).all()


def test_temperature_is_interpolated_and_multiplies_logits(monkeypatch):
    captured = []
    original = sampling_base._sample_tokens
    monkeypatch.setattr(sampling_base, "_sample_tokens",
                        lambda logits, k, g, **kw: captured.append(logits.clone()) or original(logits, k, g, **kw))
    model = StubModel()
    sample(model, HaltonScheduler(), torch.tensor([1]), steps=5, temp_min=1.0, temp_max=2.0)
    for step, (positions, logits) in enumerate(zip(model.head_positions, captured)):
        temperature = 1.0 + step * 0.25
        torch.testing.assert_close(logits, temperature * model.cond_logits[positions][..., :6])


def test_top_k_only_draws_among_the_k_best():
    model = StubModel(8, 8, codebook_size=50)
    codes = sample(model, RandomScheduler(), torch.tensor([0] * 8), steps=8, top_k=2, seed=1).codes.flatten(1)
    best_two = model.cond_logits[:, :50].topk(2, dim=-1).indices  # [N, 2]
    assert ((codes[..., None] == best_two[None]).any(-1)).all()


def test_confidence_keeps_the_most_confident_masked_tokens():
    # Without noise, a token whose logits are more peaked is more confident: position p has peak p.
    n, v = 16, 4
    cond = torch.zeros(n, v + 1)
    cond[:, 0] = torch.arange(n, dtype=torch.float) * 0.5  # distinct probabilities, no float32 ties at 1.0
    model = StubModel(codebook_size=v, cond_logits=cond, uncond_logits=cond)
    result = sample(model, ConfidenceScheduler(r_temp=0.0), torch.tensor([0]), steps=4, return_history=True)
    done = 0
    for count, unmasked in zip(tokens_per_step(16, 4).tolist(), result.unmasked_per_step):
        expected = torch.zeros(16, dtype=torch.bool)
        expected[torch.arange(15 - done, 15 - done - count, -1)] = True
        assert torch.equal(unmasked[0].flatten(), expected)
        done += count


def test_confidence_guidance_ramps_linearly_or_stays_constant():
    scheduler = ConfidenceScheduler()
    assert [scheduler.guidance_weight(2.0, i, 5) for i in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert scheduler.guidance_weight(2.0, 0, 1) == 0.0
    assert HaltonScheduler().guidance_weight(2.0, 0, 5) == 2.0
    model = StubModel()
    sample(model, scheduler, torch.tensor([0]), steps=4, cfg_weight=3.0)
    assert model.trunk_batches == [1, 2, 2, 2]  # w_0 = 0: no unconditional pass at the first step
    constant = ConfidenceScheduler(guidance="constant")
    assert [constant.guidance_weight(2.0, i, 5) for i in range(5)] == [2.0] * 5
    model = StubModel()
    sample(model, constant, torch.tensor([0]), steps=4, cfg_weight=3.0)
    assert model.trunk_batches == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="unknown guidance 'linear'; allowed: ramp, constant"):
        ConfidenceScheduler(guidance="linear")


def test_scheduler_spec_and_label():
    from halton.sampling import as_scheduler

    scheduler = ConfidenceScheduler(r_temp=3.0, guidance="constant")
    assert scheduler.spec() == {"name": "confidence", "r_temp": 3.0, "guidance": "constant", "mode": "keep"}
    again = as_scheduler(scheduler.spec())
    assert type(again) is ConfidenceScheduler and again.options() == scheduler.options()
    assert scheduler.label() == "confidence-r_temp=3.0-guidance=constant"
    assert ConfidenceScheduler().label() == "confidence" and HaltonScheduler().label() == "halton"
    assert HaltonScheduler(randomize=False).label() == "halton-randomize=False"
    assert as_scheduler("random").spec() == {"name": "random"}


def test_works_with_the_real_transformer():
    torch.manual_seed(0)
    model = MaskTransformer(17, 8, 32, 1, 2, num_classes=10)
    for name in ("halton", "confidence", "random"):
        codes = sample(model, build_scheduler(name), torch.arange(10), steps=8, cfg_weight=1.0).codes
        assert codes.shape == (10, 8, 8) and codes.max() < 17 and codes.min() >= 0
    assert model.training  # the sampler restores the training mode


@pytest.mark.parametrize("cache_refresh", [None, 2])
def test_autocast_ends_with_the_sampling(cache_refresh):
    """sample(autocast_dtype=...) runs the model in bf16 and leaves autocast off afterwards (it once stayed on: the
    evaluation's feature extractors then ran in bf16 after the first batch)."""
    torch.manual_seed(0)
    model = MaskTransformer(17, 8, 32, 1, 2, num_classes=10)
    seen = []
    linear = next(m for m in model.transformer.layers[0].modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    sample(model, build_scheduler("halton"), torch.arange(4), steps=4, cfg_weight=1.0, cache_refresh=cache_refresh,
           autocast_dtype=torch.bfloat16)
    assert seen and set(seen) == {torch.bfloat16}
    assert not torch.is_autocast_enabled("cpu") and (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "steps=0 is out of range; allowed: 1 to 16"),
    ({"steps": 17}, "steps=17 is out of range; allowed: 1 to 16"),
    ({"cfg_weight": -1.0}, "cfg_weight=-1 is out of range; allowed: >= 0"),
    ({"cfg_weight": float("nan")}, "cfg_weight=nan is not finite; allowed: >= 0"),
    ({"cfg_weight": float("inf")}, "cfg_weight=inf is not finite; allowed: >= 0"),
    ({"temp_min": 0.0}, "temp_min=0 is out of range; allowed: > 0"),
    ({"temp_max": float("nan")}, "temp_max=nan is not finite; allowed: > 0"),
    ({"temp_pow": 0.0}, "temp_pow=0 is out of range; allowed: > 0"),
    ({"temp_warmup": -1}, "temp_warmup=-1 is out of range; allowed: 0 to 4"),
    ({"temp_warmup": 5}, "temp_warmup=5 is out of range; allowed: 0 to 4"),
    ({"top_k": 99}, "top_k=99 is out of range; allowed: 0 to 6"),
    ({"schedule": "exp2"}, "schedule='exp2' is not one of the choices; allowed: arccos, cosine"),
    ({"cfg_interval": [0.3, 0.1]}, "cfg_interval=\\[0.3, 0.1\\] is not an interval"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(StubModel(), HaltonScheduler(), torch.tensor([0]), **{"steps": 4, **kwargs})


def test_class_out_of_range():
    with pytest.raises(ValueError, match="class id 3 is out of range; allowed: 0 to 2"):
        sample(StubModel(), HaltonScheduler(), torch.tensor([0, 3]), steps=4)


def test_unknown_scheduler():
    with pytest.raises(ValueError, match="unknown scheduler 'maskgit'; allowed: halton, confidence, random"):
        build_scheduler("maskgit")


def test_token_draws_follow_the_softmax_and_report_its_entropy():
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0, -30.0])
    probs = torch.softmax(logits, 0)
    rows = logits.expand(200_000, 5).clone()
    tokens, token_probs, entropy = sampling_base._sample_tokens(rows, None, torch.Generator().manual_seed(0),
                                                               entropy=True)
    frequencies = torch.bincount(tokens, minlength=5).float() / len(tokens)
    torch.testing.assert_close(frequencies, probs, atol=4e-3, rtol=0)
    torch.testing.assert_close(token_probs, probs[tokens])
    torch.testing.assert_close(entropy, torch.full((200_000,), -(probs * probs.log()).sum().item()))
    top2 = sampling_base._sample_tokens(logits.expand(1000, 5).clone(), 2, torch.Generator().manual_seed(1))[0]
    assert set(top2.tolist()) == {0, 3}


# ------------------------------------------------------------------ the reference sampler, exactly
def still_masked(counts: list[int], num_tokens: int) -> list[int]:
    left, out = num_tokens, []
    for count in counts:
        left -= count
        out.append(left)
    return out


def test_reference_confidence_counts_are_the_reference_codes():
    from halton.sampling.confidence import reference_tokens_per_step

    # measured on the reference sampler with random logits (issue 14)
    assert still_masked(reference_tokens_per_step(64, 8), 64) == [63, 59, 53, 46, 40, 32, 23, 0]
    assert still_masked(reference_tokens_per_step(256, 12), 256) == [
        255, 242, 227, 211, 196, 180, 162, 144, 124, 100, 71, 0]


@pytest.mark.parametrize("num_tokens,steps", [(64, 1), (64, 2), (64, 4), (64, 13), (64, 32), (64, 64), (36, 5),
                                              (36, 36), (36, 1)])
def test_reference_confidence_counts_are_whole(num_tokens, steps):
    from halton.sampling.confidence import reference_tokens_per_step

    counts = reference_tokens_per_step(num_tokens, steps)
    assert len(counts) == steps and min(counts) >= 0 and sum(counts) == num_tokens
    assert steps == 1 or counts[0] == 1  # its first step decodes one token


def test_reference_confidence_has_steps_that_decode_nothing():
    from halton.sampling.confidence import reference_tokens_per_step

    # with the root schedule, max(i + 1, int(N g(r_i))) is already reached at step 9 of 13 on 4x4 tokens
    assert reference_tokens_per_step(16, 13, "root") == [1, 3, 2, 2, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    assert ConfidenceScheduler(mode="reference").counts(16, 13, "root") == reference_tokens_per_step(16, 13, "root")
    assert min(ConfidenceScheduler().counts(16, 13, "root")) >= 1  # keep: the shared counts, each step >= 1
    model = StubModel()  # a step that decodes nothing still runs (and, in reference mode, draws again)
    result = sample(model, ConfidenceScheduler(mode="reference"), torch.tensor([0, 1]), steps=13, schedule="root",
                    return_history=True)
    masked = [int((codes == model.mask_id).sum()) // 2 for codes in result.codes_per_step]
    assert masked == still_masked(reference_tokens_per_step(16, 13, "root"), 16)


@pytest.mark.parametrize("mode", ["keep", "reference"])
@pytest.mark.parametrize("guidance", ["ramp", "constant"])
def test_reference_mode_redraws_decoded_tokens_and_keep_mode_never(mode, guidance):
    torch.manual_seed(0)
    model = MaskTransformer(17, 8, 32, 1, 2, num_classes=10)
    scheduler = ConfidenceScheduler(mode=mode, guidance=guidance)
    result = sample(model, scheduler, torch.arange(4), steps=8, cfg_weight=1.0, top_k=5, temp_min=0.8,
                    temp_max=1.2, seed=3, return_history=True)
    changed = 0
    for before, after in zip(result.codes_per_step, result.codes_per_step[1:]):
        decoded = before != model.mask_id
        changed += int((before[decoded] != after[decoded]).sum())
        assert bool((after[decoded] != model.mask_id).all())  # a decoded token never goes back to masked
    masked_after = [int((codes == model.mask_id).sum(dim=(1, 2))[0]) for codes in result.codes_per_step]
    if mode == "reference":
        assert changed > 0
        assert masked_after == still_masked(ConfidenceScheduler(mode="reference").counts(64, 8, "arccos"), 64)
    else:
        assert changed == 0
    assert bool((result.codes != model.mask_id).all()) and result.codes.shape == (4, 8, 8)


def test_reference_mode_with_one_step_and_seeds():
    model = MaskTransformer(17, 8, 32, 1, 2, num_classes=10)
    scheduler = ConfidenceScheduler(mode="reference")
    one = sample(model, scheduler, torch.arange(3), steps=1, seed=1).codes
    assert bool((one != model.mask_id).all())
    again = sample(model, scheduler, torch.arange(3), steps=6, cfg_weight=2.0, seed=5).codes
    assert torch.equal(again, sample(model, scheduler, torch.arange(3), steps=6, cfg_weight=2.0, seed=5).codes)


def test_unknown_confidence_mode():
    with pytest.raises(ValueError, match="unknown mode 'exact'; allowed: keep, reference"):
        ConfidenceScheduler(mode="exact")


def test_step_temperatures_follow_the_reference_rule():
    from halton.sampling.base import step_temperatures

    linear = torch.linspace(1.0, 1.2, 4).tolist()  # the reference: linspace(sm_temp_min, sm_temp, steps)
    assert step_temperatures(4, 1.0, 1.2) == linear
    assert step_temperatures(4, 1.0, 1.2, temp_pow=2.0, temp_warmup=1) == pytest.approx(
        [linear[0] ** 2 / 2, linear[1] ** 2, linear[2] ** 2, linear[3] ** 2])
    assert step_temperatures(3, 1.0, 1.0, temp_warmup=2) == [0.5, 0.5, 1.0]


def test_the_warm_up_temperature_reaches_the_logits():
    model = StubModel()
    seen = []
    original = sampling_base._sample_tokens

    def spy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return original(logits, *args, **kwargs)

    sampling_base._sample_tokens = spy
    try:
        sample(model, HaltonScheduler(randomize=False), torch.tensor([0]), steps=4, temp_warmup=1)
        plain = list(seen)
        seen.clear()
        sample(model, HaltonScheduler(randomize=False), torch.tensor([0]), steps=4)
    finally:
        sampling_base._sample_tokens = original
    assert torch.allclose(plain[0], seen[0] * 0.5) and torch.equal(plain[1], seen[1])
