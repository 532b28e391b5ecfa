import math

import pytest
import torch

from halton.sampling import SCHEDULES, mask_ratio, tokens_per_step
from halton.sampling.schedules import cumulative_unmasked


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


def test_every_schedule_every_grid_every_step_count():
    """All N <= 1024 and 1 <= steps <= N: every step >= 1 token, total exact; arccos equals the reference rule."""
    sizes = torch.arange(1, 1025)
    for steps in range(1, 1025):
        num_tokens = sizes[steps - 1:]
        for schedule in SCHEDULES:
            cumulative = cumulative_unmasked(num_tokens, steps, schedule)
            per_step = torch.diff(cumulative, dim=1, prepend=torch.zeros(len(num_tokens), 1, dtype=torch.long))
            assert per_step.min() >= 1, (schedule, steps)
            assert torch.equal(cumulative[:, -1], num_tokens), (schedule, steps)
        # The reference's max(i + 1, floor(N * g)) with g evaluated in float32.
        ratio = (torch.arange(1, steps + 1, dtype=torch.float64) / steps).float()
        g = 1 - torch.arccos(ratio) / (math.pi * 0.5)
        reference = torch.maximum((g * num_tokens[:, None]).long(), torch.arange(1, steps + 1))
        assert torch.equal(cumulative_unmasked(num_tokens, steps, "arccos"), reference), steps


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
    with pytest.raises(ValueError, match="unknown schedule 'exp'; allowed: arccos, cosine, linear, square, root"):
        tokens_per_step(64, 8, "exp")


def test_training_mask_ratio():
    u = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(mask_ratio(u, "arccos"), torch.arccos(u) / (math.pi / 2))
    assert torch.allclose(mask_ratio(u, "linear"), 1 - u)
    for schedule in SCHEDULES:
        ratio = mask_ratio(torch.rand(1000), schedule)
        assert ratio.min() >= 0 and ratio.max() <= 1
