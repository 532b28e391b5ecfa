import math

import pytest
import torch

from halton.sampling import SCHEDULES, mask_ratio, tokens_per_step
from halton.sampling.schedules import cumulative_unmasked, loss_weight


def _reference_arccos(num_tokens, steps):
    """The reference sampler's per-step loop, verbatim in behaviour (float32 torch arccos on a scalar)."""
    out = []
    for index in range(steps):
        ratio = (index + 1) / steps
        r = 1 - (torch.arccos(torch.tensor(ratio)) / (math.pi * 0.5))
        out.append(max(index + 1, int(r * num_tokens)))
    return out


@pytest.mark.parametrize("num_tokens,steps", [(16, 4), (64, 8), (64, 64), (256, 32), (256, 12), (576, 32),
                                              (1024, 32), (1024, 1024), (1, 1), (7, 3)])
def test_arccos_matches_the_reference_loop(num_tokens, steps):
    counts = tokens_per_step(num_tokens, steps, "arccos")
    assert counts.cumsum(0).tolist() == _reference_arccos(num_tokens, steps)


def test_known_counts():
    assert tokens_per_step(256, 32).tolist() == [5, 5, 5, 5, 5, 5, 5, 6, 5, 5, 6, 5, 6, 5, 6, 6, 6, 6, 6, 7, 6,
                                                 7, 7, 8, 8, 8, 9, 10, 11, 14, 17, 41]
    assert tokens_per_step(64, 8, "linear").tolist() == [8] * 8
    assert tokens_per_step(64, 8, "cosine").tolist() == [1, 3, 6, 8, 10, 11, 12, 13]  # float would end at 63
    assert tokens_per_step(64, 8, "root").tolist() == [22, 10, 7, 6, 5, 5, 4, 5]
    assert tokens_per_step(10, 10, "root").tolist() == [1] * 10  # literal rule would give steps of 0


def check_every_grid(step_counts) -> None:
    """All N <= 1024 and each of ``step_counts`` up to N: every step >= 1 token, total exact; arccos equals the
    reference rule (eMIGM's poly, exp and log at every 7th step count, to keep the sweep under a minute)."""
    sizes = torch.arange(1, 1025)
    for steps in step_counts:
        num_tokens = sizes[steps - 1:]
        for schedule in SCHEDULES if steps % 7 == 1 else SCHEDULES[:5]:
            cumulative = cumulative_unmasked(num_tokens, steps, schedule)
            per_step = torch.diff(cumulative, dim=1, prepend=torch.zeros(len(num_tokens), 1, dtype=torch.long))
            assert per_step.min() >= 1, (schedule, steps)
            assert torch.equal(cumulative[:, -1], num_tokens), (schedule, steps)
        # The reference's max(i + 1, floor(N * g)) with g evaluated in float32.
        ratio = (torch.arange(1, steps + 1, dtype=torch.float64) / steps).float()
        g = 1 - torch.arccos(ratio) / (math.pi * 0.5)
        reference = torch.maximum((g * num_tokens[:, None]).long(), torch.arange(1, steps + 1))
        assert torch.equal(cumulative_unmasked(num_tokens, steps, "arccos"), reference), steps


def test_every_schedule_every_grid_every_seventh_step_count():
    check_every_grid(range(1, 1025, 7))  # every schedule at each of these


@pytest.mark.slow  # the whole sweep: about 5 times the work of the one above
def test_every_schedule_every_grid_every_step_count():
    check_every_grid(range(1, 1025))


def test_public_function_agrees_with_batched_core():
    for schedule in SCHEDULES:
        for num_tokens, steps in [(256, 16), (100, 99), (1024, 7)]:
            expected = torch.diff(cumulative_unmasked(torch.tensor([num_tokens]), steps, schedule)[0], prepend=torch.zeros(1, dtype=torch.long))
            assert torch.equal(tokens_per_step(num_tokens, steps, schedule), expected)


@pytest.mark.parametrize("steps", [0, -3, 65])
def test_steps_out_of_range(steps):
    with pytest.raises(ValueError, match=rf"steps={steps} is out of range; allowed: 1 to 64"):
        tokens_per_step(64, steps)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="schedule='exp2' is not one of the choices; allowed: arccos, cosine, linear, "
                                         "square, root, poly, exp, log$"):
        tokens_per_step(64, 8, "exp2")


@pytest.mark.parametrize("option,value,problem", [("power", 0, "is out of range"), ("power", float("nan"), "is not finite"),
                                                  ("rate", -1, "is out of range"), ("rate", float("inf"), "is not finite"),
                                                  ("rate", "5", "is not a number")])
def test_bad_schedule_parameters(option, value, problem):
    allowed = {"power": "the poly exponent", "rate": "the exp and log rate"}[option]
    message = f"{option}={value!r} {problem}; allowed: > 0 ({allowed})"
    for call in (lambda: tokens_per_step(64, 8, "poly", **{option: value}),
                 lambda: mask_ratio(torch.rand(3), "linear", **{option: value}),
                 lambda: loss_weight(torch.rand(3), "cosine", **{option: value})):
        with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
            call()


def test_training_mask_ratio():
    u = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(mask_ratio(u, "arccos"), torch.arccos(u) / (math.pi / 2))
    assert torch.allclose(mask_ratio(u, "linear"), 1 - u)
    for schedule in SCHEDULES:
        ratio = mask_ratio(torch.rand(1000), schedule)
        assert ratio.min() >= 0 and ratio.max() <= 1


# eMIGM's notation: mask ratio gamma(p) at p = 1 - u, weight gamma'(p) / gamma(p). Each row: schedule, options,
# gamma(p) and w(p) written out by hand at p = 0.5 and p = 0.25.
E5 = math.exp(5)
KNOWN = [
    ("arccos", {}, [2 / 3, math.acos(0.75) / (math.pi / 2)],
     [1 / (math.sqrt(0.75) * math.pi / 3), 1 / (math.sqrt(1 - 0.75 ** 2) * math.acos(0.75))]),
    ("cosine", {}, [math.sqrt(0.5), math.cos(math.pi / 2 * 0.75)],
     [math.pi / 2, math.pi / 2 * math.tan(3 * math.pi / 8)]),
    ("linear", {}, [0.5, 0.25], [2.0, 4.0]),
    ("square", {}, [0.75, 1 - 0.75 ** 2], [4 / 3, 1.5 / (1 - 0.5625)]),
    ("root", {}, [1 - math.sqrt(0.5), 1 - math.sqrt(0.75)],
     [1 / (2 * math.sqrt(0.5) * (1 - math.sqrt(0.5))), 1 / (2 * math.sqrt(0.75) * (1 - math.sqrt(0.75)))]),
    ("poly", {}, [math.sqrt(0.5), 0.5], [1.0, 2.0]),  # eMIGM's poly-0.5: 0.5 / p
    ("poly", {"power": 2.0}, [0.25, 0.0625], [4.0, 8.0]),
    ("exp", {}, [1 - math.exp(-2.5), 1 - math.exp(-1.25)],
     [5 * math.exp(-2.5) / (1 - math.exp(-2.5)), 5 * math.exp(-1.25) / (1 - math.exp(-1.25))]),
    ("exp", {"rate": 2.0}, [1 - math.exp(-1), 1 - math.exp(-0.5)],
     [2 / (math.e - 1), 2 / (math.exp(0.5) - 1)]),
    ("log", {}, [math.log(1 + (E5 - 1) / 2) / 5, math.log(1 + (E5 - 1) / 4) / 5],
     [(E5 - 1) / ((1 + (E5 - 1) / 2) * math.log(1 + (E5 - 1) / 2)),
      (E5 - 1) / ((1 + (E5 - 1) / 4) * math.log(1 + (E5 - 1) / 4))]),
]


@pytest.mark.parametrize("schedule,options,ratios,weights", KNOWN)
def test_mask_ratio_and_loss_weight_at_known_points(schedule, options, ratios, weights):
    u = torch.tensor([0.5, 0.75], dtype=torch.float64)  # p = 0.5, 0.25
    torch.testing.assert_close(mask_ratio(u, schedule, **options), torch.tensor(ratios, dtype=torch.float64))
    torch.testing.assert_close(loss_weight(u, schedule, **options), torch.tensor(weights, dtype=torch.float64))


def test_known_points_cover_every_schedule():
    assert {row[0] for row in KNOWN} == set(SCHEDULES)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("options", [{}, {"power": 2.0, "rate": 2.0}, {"power": 0.3, "rate": 200.0}])
def test_loss_weight_is_the_log_derivative_of_the_mask_ratio(schedule, options):
    """w = gamma'(p) / gamma(p) = -d/du log mask_ratio(u), checked against autograd."""
    u = torch.linspace(0.01, 0.99, 99, dtype=torch.float64).requires_grad_()
    ratio = mask_ratio(u, schedule, **options)
    (slope,) = torch.autograd.grad(ratio.sum(), u)
    torch.testing.assert_close(loss_weight(u.detach(), schedule, **options), -slope / ratio.detach())
    assert ratio.min() > 0 and ratio.max() <= 1 and (ratio[1:] <= ratio[:-1]).all()  # saturates at rate 200


def test_large_rates_stay_finite_in_float32():
    u = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(mask_ratio(u, "log", rate=200.0),
                               torch.tensor([1.0, 1 + math.log(0.5) / 200, 0.0]))
    torch.testing.assert_close(mask_ratio(u, "exp", rate=200.0), torch.tensor([1.0, 1.0, 0.0]))


def test_new_schedules_known_counts():
    # 64 tokens in 8 steps; e.g. poly: floor(64 (1 - sqrt(1 - i/8))) = 4, 8, 13, 18, 24, 32, 41, 64
    assert tokens_per_step(64, 8, "poly").tolist() == [4, 4, 5, 5, 6, 8, 9, 23]
    assert tokens_per_step(64, 8, "poly", power=1.0).tolist() == [8] * 8  # = linear
    assert tokens_per_step(64, 8, "exp").tolist() == [1, 1, 1, 2, 4, 9, 16, 30]
    assert tokens_per_step(64, 8, "log").tolist() == [1, 2, 2, 3, 4, 5, 9, 38]


@pytest.mark.parametrize("schedule,options", [("poly", {"power": 3.0}), ("poly", {"power": 0.1}),
                                              ("exp", {"rate": 20.0}), ("log", {"rate": 1.0}),
                                              ("log", {"rate": 100.0})])
def test_schedule_parameters_keep_the_exact_count_rule(schedule, options):
    sizes = torch.arange(1, 257)
    for steps in range(1, 257):
        cumulative = cumulative_unmasked(sizes[steps - 1:], steps, schedule, **options)
        per_step = torch.diff(cumulative, dim=1, prepend=torch.zeros(len(cumulative), 1, dtype=torch.long))
        assert per_step.min() >= 1 and torch.equal(cumulative[:, -1], sizes[steps - 1:]), steps
    counts = tokens_per_step(256, 16, schedule, **options)
    assert counts.sum() == 256 and counts.min() >= 1


@pytest.mark.parametrize("schedule,options", [("poly", {"schedule_power": 2.0}), ("exp", {"schedule_rate": 1.5}),
                                              ("log", {"schedule_rate": 1.0})])
@pytest.mark.parametrize("scheduler", ["halton", "confidence", "random"])
def test_sampling_unmasks_the_parameterised_schedule_counts(schedule, options, scheduler):
    from halton.sampling import build_scheduler, sample
    from test_sampling import StubModel

    power, rate = options.get("schedule_power", 0.5), options.get("schedule_rate", 5.0)
    expected = tokens_per_step(16, 6, schedule, power=power, rate=rate).tolist()
    assert expected != tokens_per_step(16, 6, schedule).tolist()  # the parameter changes the counts
    result = sample(StubModel(), build_scheduler(scheduler), torch.tensor([0, 1]), steps=6, schedule=schedule,
                    return_history=True, **options)
    assert [int(u[0].sum()) for u in result.unmasked_per_step] == expected


def test_reference_confidence_counts_take_the_schedule_parameters():
    from halton.sampling.confidence import reference_tokens_per_step

    # targets max(i + 1, floor(64 g(i / 7))) with g(r) = 1 - (1 - r)^2 (poly, power 2): 1, 16, 31, 43, 52, 58, 62, 64
    assert reference_tokens_per_step(64, 8, "poly", power=2.0) == [1, 15, 15, 12, 9, 6, 4, 2]
    assert reference_tokens_per_step(64, 8, "poly", power=2.0) != reference_tokens_per_step(64, 8, "poly")


def test_schedule_label_names_a_changed_parameter():
    from halton.sampling.schedules import schedule_label

    assert [schedule_label("poly"), schedule_label("poly", power=0.7), schedule_label("exp", rate=3.0),
            schedule_label("log", rate=5.0), schedule_label("arccos", power=2.0, rate=1.0)] == \
        ["poly", "poly-power=0.7", "exp-rate=3", "log", "arccos"]
