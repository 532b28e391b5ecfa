import math

import pytest
import torch
import torch.nn.functional as F

from halton.models import MaskTransformer
from halton.options import TRAIN_METRICS
from halton.sampling import HaltonScheduler
from halton.sampling.schedules import SCHEDULES, loss_weight, mask_ratio
from halton.training import MaskGITModule
from halton.training.masking import MASKINGS, TrainingMask

OLD_RATIOS = {  # the module's mask ratios before eMIGM's options, written out
    "arccos": lambda u: torch.arccos(u) / (math.pi * 0.5), "cosine": lambda u: torch.cos(u * math.pi * 0.5),
    "linear": lambda u: 1 - u, "square": lambda u: 1 - u ** 2, "root": lambda u: 1 - u.sqrt(),
}


def old_mask_codes(codes, schedule):
    """MaskGITModule.mask_codes as it was, verbatim."""
    batch, num_tokens = codes.shape[0], codes[0].numel()
    ratio = OLD_RATIOS[schedule](torch.rand(batch, device=codes.device))
    mask = torch.rand(batch, num_tokens, device=codes.device) < ratio[:, None]
    empty = ~mask.any(dim=1)
    one = F.one_hot(torch.randint(num_tokens, (batch,), device=codes.device), num_tokens).bool()
    return mask | (empty[:, None] & one)


def draws(seed, batch):
    """The schedule points u that a TrainingMask seeded with ``seed`` draws first."""
    return torch.rand(batch, generator=torch.Generator().manual_seed(seed))


def tiny_module(**kwargs):
    net = MaskTransformer(17, 8, 32, 1, 2, num_classes=10)
    return MaskGITModule(net, lr=1e-3, warmup_steps=2, total_steps=10, weight_decay=0.0, **kwargs)


@pytest.mark.parametrize("schedule", list(OLD_RATIOS))
def test_defaults_draw_exactly_the_old_masks(schedule):
    codes = torch.zeros(500, 2, 2, dtype=torch.long)  # 4 tokens: many samples draw no mask and get one token
    torch.manual_seed(3)
    old = old_mask_codes(codes, schedule)
    after_old = torch.rand(4)
    torch.manual_seed(3)
    mask, weights = TrainingMask(schedule)(codes)
    assert torch.equal(mask, old) and weights is None
    assert torch.equal(torch.rand(4), after_old)  # the same number of draws: later draws (label dropout) agree
    module = tiny_module(mask_schedule=schedule)
    torch.manual_seed(3)
    assert torch.equal(module.mask_codes(codes)[0], old)
    torch.manual_seed(3)
    ratio = OLD_RATIOS[schedule](torch.rand(500))
    assert ((torch.rand(500, 4) < ratio[:, None]).sum() < old.sum())  # the one-token fallback did happen


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_exact_masks_ceil_n_gamma_tokens(schedule):
    codes = torch.zeros(256, 8, 8, dtype=torch.long)
    mask, _ = TrainingMask(schedule, masking="exact")(codes, torch.Generator().manual_seed(0))
    expected = torch.ceil(64 * mask_ratio(draws(0, 256), schedule)).long().clamp(min=1)
    assert torch.equal(mask.sum(1), expected)
    assert expected.min() >= 1 and expected.max() <= 64


def test_exact_masking_by_hand():
    # linear, one draw for the batch, u = 0.496 capped at 1 - t_min = 0.3: every sample masks ceil(64 * 0.7) = 45
    assert draws(0, 1).item() > 0.3
    codes = torch.zeros(5, 8, 8, dtype=torch.long)
    masking = TrainingMask("linear", masking="exact", t_min=0.7, t_per="batch")
    mask, _ = masking(codes, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [45] * 5
    assert len({tuple(row.nonzero().flatten().tolist()) for row in mask}) == 5  # each sample its own tokens


def test_exact_masking_is_uniform_over_positions():
    codes = torch.zeros(20000, 4, 4, dtype=torch.long)
    mask, _ = TrainingMask("linear", masking="exact", t_per="batch")(codes, torch.Generator().manual_seed(1))
    frequency = mask.float().mean(0)
    assert (frequency - frequency.mean()).abs().max() < 0.03


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("masking", MASKINGS)
def test_t_min_truncates_the_mask_ratio(schedule, masking):
    codes = torch.zeros(400, 6, 4, dtype=torch.long)
    weighting = "none" if schedule == "root" else "schedule"
    sampler = TrainingMask(schedule, masking=masking, t_min=0.2, loss_weight=weighting)
    u = sampler.positions(400, generator=torch.Generator().manual_seed(0))
    floor = mask_ratio(torch.tensor(0.8), schedule)  # gamma(t_min): t = 1 - u >= 0.2
    assert (mask_ratio(u, schedule) >= floor).all()
    assert (u >= 0.8 * (1 - 1e-3) - 1e-7).sum() > 50  # about a fifth of the draws were truncated
    mask, _ = sampler(codes, torch.Generator().manual_seed(0))
    if masking != "independent":
        assert mask.sum(1).min() >= math.ceil(24 * floor.item() - 1e-4)


@pytest.mark.parametrize("masking", MASKINGS)
def test_t_per_batch_draws_one_ratio(masking):
    codes = torch.zeros(64, 8, 8, dtype=torch.long)
    sampler = TrainingMask("cosine", masking=masking, t_per="batch", loss_weight="schedule")
    u = draws(5, 1) * (1 - 1e-3)
    mask, weights = sampler(codes, torch.Generator().manual_seed(5))
    assert torch.equal(weights, loss_weight(u, "cosine").expand(64))
    if masking != "independent":
        assert mask.sum(1).tolist() == [math.ceil(64 * mask_ratio(u, "cosine").item())] * 64
    per_sample = TrainingMask("cosine", masking=masking, loss_weight="schedule")
    assert per_sample(codes, torch.Generator().manual_seed(5))[1].unique().numel() == 64


@pytest.mark.parametrize("schedule", ["linear", "poly", "log"])
def test_loss_weights_follow_the_offset_schedule_point(schedule):
    codes = torch.zeros(1000, 4, 4, dtype=torch.long)
    _, weights = TrainingMask(schedule, loss_weight="schedule")(codes, torch.Generator().manual_seed(2))
    u = draws(2, 1000) * (1 - 1e-3)  # eMIGM's p = 1e-3 + (1 - 1e-3) t
    torch.testing.assert_close(weights, loss_weight(u, schedule))
    assert weights.isfinite().all()


@pytest.mark.parametrize("height,width", [(8, 8), (4, 6), (16, 16)])
def test_halton_masks_are_the_end_of_the_rolled_halton_order(height, width):
    batch, num_tokens = 32, height * width
    codes = torch.zeros(batch, height, width, dtype=torch.long)
    mask, _ = TrainingMask("arccos", masking="halton")(codes, torch.Generator().manual_seed(7))
    # The sampler's order with the same offsets: the same generator, past the schedule draws.
    generator = torch.Generator().manual_seed(7)
    u = torch.rand(batch, generator=generator)
    order = HaltonScheduler(randomize=True).order(batch, height, width, generator, "cpu")
    count = torch.ceil(num_tokens * mask_ratio(u)).long().clamp(1, num_tokens)
    for i in range(batch):
        expected = torch.zeros(num_tokens, dtype=torch.bool)
        expected[order[i, num_tokens - count[i]:]] = True
        assert torch.equal(mask[i], expected), i
    assert len({tuple(row.tolist()) for row in order}) > 1  # the offsets differ between samples


@pytest.mark.parametrize("masking", MASKINGS)
def test_a_zero_ratio_still_masks_one_token(masking, monkeypatch):
    sampler = TrainingMask("linear", masking=masking)
    monkeypatch.setattr(sampler, "positions", lambda batch, device, generator: torch.ones(batch))  # ratio 1 - u = 0
    mask, _ = sampler(torch.zeros(7, 4, 4, dtype=torch.long))
    assert mask.sum(1).tolist() == [1] * 7


@pytest.mark.parametrize("kwargs,message", [
    ({"masking": "x"}, "masking='x' is not one of the choices; allowed: independent, exact, halton"),
    ({"loss_weight": "on"}, "loss_weight='on' is not one of the choices; allowed: none, schedule"),
    ({"t_per": "step"}, "t_per='step' is not one of the choices; allowed: sample, batch"),
    ({"t_min": 1.0}, "t_min=1 is out of range; allowed: >= 0 and < 1"),
    ({"t_min": -0.1}, "t_min=-0.1 is out of range; allowed: >= 0 and < 1"),
    ({"schedule_power": 0.0}, "schedule_power=0 is out of range; allowed: > 0 (the poly exponent)"),
    ({"schedule_rate": float("nan")}, "schedule_rate=nan is not finite; allowed: > 0 (the exp and log rate)"),
    ({"mask_schedule": "exp2"}, "mask_schedule='exp2' is not one of the choices; allowed: arccos"),
    ({"mask_schedule": "root", "loss_weight": "schedule"},
     "loss_weight='schedule' does not work with mask_schedule='root' (its weight is infinite at full masking)"),
    ({"loss_on": "some"}, "loss_on='some' is not one of the choices; allowed: masked, all"),
    ({"label_dropout": 1.5}, "label_dropout=1.5 is out of range; allowed: >= 0 and <= 1"),
    ({"betas": [0.9, 1.0]}, "betas.1=1 is out of range; allowed: >= 0 and < 1"),
])
def test_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_module(**kwargs)


def test_halton_masking_needs_a_grid():
    with pytest.raises(ValueError, match=r"masking='halton' needs codes \[B, H, W\], got shape \(2, 64\)"):
        TrainingMask(masking="halton")(torch.zeros(2, 64, dtype=torch.long))


@pytest.mark.parametrize("loss_on", ["masked", "all"])
def test_weighted_loss_is_the_weighted_mean_over_scored_tokens(loss_on, monkeypatch):
    torch.manual_seed(0)
    module = tiny_module(loss_on=loss_on, label_dropout=0.0, loss_weight="schedule")
    codes = torch.randint(0, 17, (3, 8, 8))
    labels = torch.tensor([1, 2, 3])
    mask = torch.rand(3, 64) < 0.5
    weights = torch.tensor([0.5, 2.0, 3.0])
    monkeypatch.setattr(module, "mask_codes", lambda c: (mask, weights))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    loss = module._step({"codes": codes, "labels": labels}, "train")
    logits = module.model(codes.flatten(1).masked_fill(mask, 17), labels, torch.zeros(3, dtype=torch.bool))
    scored = mask if loss_on == "masked" else torch.ones_like(mask)
    ce = F.cross_entropy(logits.transpose(1, 2), codes.flatten(1), reduction="none")
    torch.testing.assert_close(loss, (ce * weights[:, None] * scored).sum() / scored.sum())


@pytest.mark.parametrize("options", [
    {}, {"masking": "exact"}, {"masking": "halton"}, {"loss_weight": "schedule"}, {"t_min": 0.2},
    {"t_per": "batch"}, {"mask_schedule": "poly", "schedule_power": 0.5, "loss_weight": "schedule"},
    {"mask_schedule": "exp", "masking": "halton", "t_min": 0.2, "t_per": "batch", "loss_weight": "schedule"},
    {"mask_schedule": "log", "masking": "exact", "loss_weight": "schedule", "loss_on": "all"},
])
def test_a_training_step_with_each_option(options, monkeypatch):
    torch.manual_seed(0)
    module = tiny_module(**options)
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **k: logged.setdefault(name, value))
    loss = module.training_step({"codes": torch.randint(0, 17, (6, 8, 8)), "labels": torch.arange(6)}, 0)
    loss.backward()
    assert loss.isfinite() and loss > 0 and set(logged) == {"train/loss", "train/acc"} == set(TRAIN_METRICS)
    assert all(p.grad is None or p.grad.isfinite().all() for p in module.parameters())
    assert module.hparams.masking == options.get("masking", "independent")
    assert all(type(module.hparams[k]) in (str, float, int) for k in ("masking", "loss_weight", "t_min", "t_per"))


@pytest.mark.parametrize("override,message", [
    ("model.masking=x", "model.masking='x' is not one of the choices; allowed: independent, exact, halton"),
    ("model.loss_weight=yes", "model.loss_weight='yes' is not one of the choices; allowed: none, schedule"),
    ("model.t_per=step", "model.t_per='step' is not one of the choices; allowed: sample, batch"),
    ("model.t_min=1", "model.t_min=1 is out of range; allowed: >= 0 and < 1"),
    ("model.schedule_power=0", "model.schedule_power=0 is out of range; allowed: > 0 (the poly exponent)"),
    ("model.schedule_rate=-5", "model.schedule_rate=-5 is out of range; allowed: > 0 (the exp and log"),
    ("model.mask_schedule=exp2", "model.mask_schedule='exp2' is not one of the choices; allowed: arccos, cosine, "
                                "linear, square, root, poly, exp, log"),
    ("model.loss_weight=schedule", "model.loss_weight='schedule' does not work with model.mask_schedule='root'"),
])
def test_train_validation(override, message):
    from test_configs import compose_job

    from halton.validation import Invalid, validate

    overrides = [override] + (["model.mask_schedule=root"] if "loss_weight=schedule" in override else [])
    with pytest.raises(Invalid, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_job("train", overrides), "train")
    good = ["model.masking=halton", "model.loss_weight=schedule", "model.t_min=0.2", "model.t_per=batch",
            "model.mask_schedule=log", "model.schedule_rate=5"]
    validate(compose_job("train", good), "train")
