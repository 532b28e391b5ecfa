"""Classifier-free guidance limited to a time interval, and the network evaluations (trunk forwards) per image."""

import pytest
import torch

from conftest import TINY_NET, run
from halton.evaluation.results import KEY_COLUMNS, ResultsFile, interval_text, row_key
from halton.sampling import ConfidenceScheduler, HaltonScheduler, RandomScheduler, sample, tokens_per_step
from test_sampling import StubModel

LABELS = torch.tensor([0, 1, 2])


class GuidedAt(HaltonScheduler):
    """Halton with its CFG weight zeroed outside the given steps: what an interval must be equivalent to."""

    def __init__(self, steps_guided):
        super().__init__(randomize=True)
        self._guided = set(steps_guided)

    def guidance_weight(self, weight, step, steps):
        return weight if step in self._guided else 0.0


def test_sixteen_steps_guided_in_four_cost_twenty_forwards():
    # 4x4 tokens in 16 steps: one token per step, so step i runs at s_i = 1 - i/16; (0.5, 0.75] holds
    # s = 0.75, 0.6875, 0.625, 0.5625 (steps 4-7): 0.75 is included and 0.5 (step 8) is not.
    model = StubModel()
    result = sample(model, HaltonScheduler(), LABELS, steps=16, cfg_weight=2.0, cfg_interval=(0.5, 0.75))
    assert result.nfe_per_step == [1] * 4 + [2] * 4 + [1] * 8 and result.nfe_per_image == 20
    # the unconditional half runs only inside the interval: the trunk and the head see one copy elsewhere
    assert model.trunk_batches == [3] * 4 + [6] * 4 + [3] * 8
    assert [p.shape[0] for p in model.head_positions] == [3] * 4 + [6] * 4 + [3] * 8
    # and the codes are those of a scheduler whose weight is 0 outside those steps
    reference = sample(StubModel(), GuidedAt(range(4, 8)), LABELS, steps=16, cfg_weight=2.0)
    assert torch.equal(result.codes, reference.codes) and reference.nfe_per_image == 20


def test_without_an_interval_every_step_is_guided():
    model = StubModel()
    result = sample(model, HaltonScheduler(), LABELS, steps=16, cfg_weight=2.0, seed=5)
    assert result.nfe_per_image == 32 and model.trunk_batches == [6] * 16
    assert sample(StubModel(), HaltonScheduler(), LABELS, steps=16, cfg_weight=0.0).nfe_per_image == 16


@pytest.mark.parametrize("scheduler", [HaltonScheduler(), ConfidenceScheduler(), ConfidenceScheduler(mode="reference"),
                                       RandomScheduler()], ids=["halton", "confidence", "reference", "random"])
def test_default_and_an_interval_covering_every_step_are_today_bit_for_bit(scheduler):
    default = sample(StubModel(), scheduler, LABELS, steps=6, cfg_weight=1.5, seed=2, return_history=True)
    for interval in (None, (0.0, 1.0)):  # every s_i lies in (0, 1]
        again = sample(StubModel(), scheduler, LABELS, steps=6, cfg_weight=1.5, seed=2, return_history=True,
                       cfg_interval=interval)
        assert torch.equal(again.codes, default.codes) and again.nfe_per_step == default.nfe_per_step
        assert all(torch.equal(a, b) for a, b in zip(again.predictions_per_step, default.predictions_per_step))


def test_time_uses_the_exact_counts_of_each_step():
    counts = tokens_per_step(64, 8).tolist()  # arccos: uneven steps
    before = [sum(counts[:i]) for i in range(8)]
    interval = (0.2, 0.7)
    expected = [2 if 0.2 < 1 - d / 64 <= 0.7 else 1 for d in before]
    assert 2 < sum(expected) - 8 < 8  # a strict part of the steps
    model = StubModel(8, 8)
    result = sample(model, RandomScheduler(), LABELS, steps=8, cfg_weight=1.0, cfg_interval=interval)
    assert result.nfe_per_step == expected and model.trunk_batches == [3 * n for n in expected]


def test_confidence_ramp_counts_its_unguided_first_step():
    # the ramp gives step 0 the weight 0: one pass, inside the interval or not
    assert sample(StubModel(), ConfidenceScheduler(), LABELS, steps=16, cfg_weight=1.0).nfe_per_image == 31
    # (0.9, 1]: steps 0 (s = 1, weight 0) and 1 (s = 15/16)
    result = sample(StubModel(), ConfidenceScheduler(), LABELS, steps=16, cfg_weight=1.0, cfg_interval=[0.9, 1.0])
    assert result.nfe_per_step == [1, 2] + [1] * 14 and result.nfe_per_image == 17
    constant = sample(StubModel(), ConfidenceScheduler(guidance="constant"), LABELS, steps=16, cfg_weight=1.0,
                      cfg_interval=[0.9, 1.0])
    assert constant.nfe_per_image == 18


def test_head_only_filling_is_not_counted():
    options = dict(steps=8, cfg_weight=1.0, cfg_interval=(0.5, 1.0), schedule="linear")  # 2 tokens per step
    plain = sample(StubModel(), HaltonScheduler(), LABELS, **options)
    filled = sample(StubModel(), HaltonScheduler(), LABELS, **options, fill_steps=(1, 2, 3))
    assert filled.nfe_per_step == plain.nfe_per_step == [2] * 4 + [1] * 4  # s = 1 - 2i/16


def test_an_edit_measures_time_over_its_masked_tokens():
    init = torch.randint(0, 6, (3, 4, 4))
    init[:, :2] = StubModel().mask_id  # 8 masked tokens: 8 steps of one, s_i = 1 - i/8
    result = sample(StubModel(), HaltonScheduler(), LABELS, steps=8, cfg_weight=1.0, cfg_interval=(0.5, 1.0),
                    init_codes=init)
    assert result.nfe_per_step == [2] * 4 + [1] * 4


@pytest.mark.parametrize("interval", [(0.3, 0.1), (0.2, 0.2), (-0.1, 0.5), (0.1, 1.5), (float("nan"), 0.5),
                                      (0.1, 0.2, 0.3), 0.3, "ab"])
def test_bad_intervals_are_one_line_errors(interval):
    with pytest.raises(ValueError, match=r"^cfg_interval=.* is not an interval; allowed: null .*0 <= t_min < t_max "
                                         r"<= 1") as error:
        sample(StubModel(), HaltonScheduler(), LABELS, steps=4, cfg_weight=1.0, cfg_interval=interval)
    assert "\n" not in str(error.value)


def test_results_key_the_interval_and_older_rows_match_the_default():
    assert "cfg_interval" in KEY_COLUMNS
    assert interval_text(None) == "" and interval_text((0.1, 0.3)) == "0.1,0.3" and interval_text([0, 1]) == "0.0,1.0"
    old = {"experiment": "digits", "steps": "8", "cfg_weight": "1.0", "eval_step": "8"}  # written before the column
    assert row_key(old) == row_key({**old, "cfg_interval": ""})
    assert row_key(old) != row_key({**old, "cfg_interval": "0.1,0.3"})


@pytest.mark.slow  # evaluate.py end to end; the interval's rule and sampling are tested in-process
def test_evaluate_writes_the_interval_and_the_forwards(tiny_run):
    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    common = ["experiment=digits", f"checkpoint={ckpt}", *TINY_NET, f"paths.runs_dir={tiny_run}",
              f"paths.data_dir={tiny_run / 'data'}", "num_images=20", "batch_size=20", "name=interval",
              "scheduler=halton", "steps=4", "intermediate_steps=[2]"]
    run("evaluate.py", *common, "cfg_interval=[0.5,1.0]")
    run("evaluate.py", *common)
    rows = ResultsFile(tiny_run / "interval" / "eval" / "results.csv").rows()
    found = {(r["cfg_interval"], r["eval_step"]): r["nfe_per_image"] for r in rows}
    counts = tokens_per_step(64, 4).tolist()
    guided = [2 if 0.5 < 1 - sum(counts[:i]) / 64 <= 1.0 else 1 for i in range(4)]
    assert found == {("0.5,1.0", "2"): str(sum(guided[:2])), ("0.5,1.0", "4"): str(sum(guided)),
                     ("", "2"): "4", ("", "4"): "8"}
    grids = sorted(p.name for p in (tiny_run / "interval" / "eval" / "grids").iterdir())
    assert grids == ["halton_steps4_cfg1_interval0.5-1.0_seed0.png", "halton_steps4_cfg1_seed0.png"]
