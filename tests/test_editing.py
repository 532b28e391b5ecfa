"""Editing: generating only the masked tokens of given codes (every scheduler, class and text conditions), the
region masks (box, mask image, outpainting), and sample.py's edit grid end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_NET, run, run_in_process
from halton.conditions import TextEmbeddings
from halton.models import MaskTransformer
from halton.sampling import (ConfidenceScheduler, HaltonScheduler, RandomScheduler, sample, tokens_per_step)
from halton.sampling.confidence import reference_tokens_per_step
from halton.sampling.editing import (apply_mask, box_mask, composite, dilate_mask, image_mask, outpaint_mask,
                                     outpaint_tokens, read_image, shift)
from halton.tokenizers import PixelTokenizer
from halton.utils.images import MIN_CELL, wrap_labels
from test_sampling import StubModel
from test_text_model import tiny as tiny_text_model

SCHEDULERS = {"halton": HaltonScheduler(randomize=False), "halton-randomized": HaltonScheduler(),
              "confidence": ConfidenceScheduler(), "confidence-reference": ConfidenceScheduler(mode="reference"),
              "random": RandomScheduler()}


def class_model():
    torch.manual_seed(0)
    return MaskTransformer(17, 8, 32, 1, 2, num_classes=10).eval(), torch.tensor([0, 3, 7, 3])


def text_model():
    generator = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] * 4 + [0], [1] * 5], dtype=torch.bool)
    return tiny_text_model(), TextEmbeddings(torch.randn(4, 5, 12, generator=generator), mask)


def edit_codes(model, region):
    generator = torch.Generator().manual_seed(2)
    codes = torch.randint(0, model.codebook_size, (4, *model.grid), generator=generator)
    return apply_mask(codes, region, model.mask_id)


@pytest.mark.parametrize("kind", ["class", "text"])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_an_edit_fills_the_region_and_keeps_every_other_token(name, kind):
    scheduler = SCHEDULERS[name]
    model, condition = class_model() if kind == "class" else text_model()
    height, width = model.grid
    region = box_mask([1, 1, width - 1, height // 2 + 1], (height, width), (height, width))
    init = edit_codes(model, region)
    known = init != model.mask_id
    masked_count = int(region.sum())
    result = sample(model, scheduler, condition, steps=3, cfg_weight=1.5, seed=4, init_codes=init,
                    return_history=True, fill_steps=(0,))
    assert torch.equal(result.codes[known], init[known]) and (result.codes != model.mask_id).all()
    assert result.codes.max() < model.codebook_size
    # every region token is unmasked exactly once, by the counts over the masked tokens, none outside
    unmasked = torch.stack(result.unmasked_per_step)
    assert torch.equal(unmasked.sum(0), region.long().expand(4, -1, -1))
    counts = (reference_tokens_per_step if name == "confidence-reference" else tokens_per_step)(masked_count, 3)
    assert unmasked.flatten(2).sum(-1).tolist() == [[int(c)] * 4 for c in counts]
    for codes in [*result.codes_per_step, result.filled[0]]:
        assert torch.equal(codes[known], init[known])
    assert (result.predictions_per_step[0][known] == model.mask_id).all()  # no logits at the kept tokens


@pytest.mark.parametrize("name", SCHEDULERS)
def test_the_model_sees_the_kept_tokens_and_the_head_runs_only_in_the_region(name):
    model = StubModel(4, 4)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 1:4] = True
    init = edit_codes(model, region)
    sample(model, SCHEDULERS[name], torch.tensor([0, 1, 2, 0]), steps=4, cfg_weight=1.0, init_codes=init)
    assert torch.equal(model.inputs[0][:4], init.flatten(1))  # (followed by the CFG copy)
    allowed = region.flatten()
    assert all(allowed[positions].all() for positions in model.head_positions)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_everything_masked_is_sampling_from_scratch_bit_for_bit(name):
    model = StubModel(4, 4)
    labels = torch.tensor([0, 1, 2])
    fresh = sample(model, SCHEDULERS[name], labels, steps=5, cfg_weight=1.0, seed=9, return_history=True)
    init = torch.full((3, 4, 4), model.mask_id)
    edited = sample(model, SCHEDULERS[name], labels, steps=5, cfg_weight=1.0, seed=9, return_history=True,
                    init_codes=init)
    assert torch.equal(edited.codes, fresh.codes)
    assert all(torch.equal(a, b) for a, b in zip(edited.unmasked_per_step, fresh.unmasked_per_step))


@pytest.mark.parametrize("randomize", [False, True])
def test_halton_walks_its_order_restricted_to_the_region(randomize):
    model, steps, seed = StubModel(8, 8), 5, 6
    generator = torch.Generator().manual_seed(seed)  # the order is the run's first draw
    full = HaltonScheduler(randomize).order(3, 8, 8, generator, torch.device("cpu"))
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:7, 1:5] = True
    region[0, 7] = True
    init = edit_codes(model, region)[:3]
    result = sample(model, HaltonScheduler(randomize), torch.tensor([0, 1, 2]), steps=steps, seed=seed,
                    init_codes=init, return_history=True)
    counts = tokens_per_step(int(region.sum()), steps).tolist()
    for b in range(3):
        restricted = [p for p in full[b].tolist() if region.flatten()[p]]
        done = 0
        for count, unmasked in zip(counts, result.unmasked_per_step):
            assert set(unmasked[b].flatten().nonzero()[:, 0].tolist()) == set(restricted[done:done + count])
            done += count


def test_confidence_reference_redraws_only_the_tokens_of_this_run():
    model = StubModel(4, 4)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:, :2] = True
    init = edit_codes(model, region)[:2]
    result = sample(model, ConfidenceScheduler(mode="reference"), torch.tensor([0, 1]), steps=4, cfg_weight=1.0,
                    init_codes=init, return_history=True)
    known = init != model.mask_id
    changed = torch.zeros_like(known)
    for before, after in zip(result.codes_per_step, result.codes_per_step[1:]):
        decoded = before != model.mask_id
        changed |= decoded & (after != before)
        assert torch.equal(after[known], init[known])
    assert changed.any() and not (changed & known).any()  # decoded tokens were redrawn, kept ones never


def test_outpainting_regenerates_the_bands_and_keeps_the_shifted_tokens():
    model = StubModel(8, 8)
    codes = edit_codes(model, torch.zeros(8, 8, dtype=torch.bool))[:2]
    sides = outpaint_tokens([2, 0, 0, 3], (8, 8), (8, 8))
    assert sides == (2, 0, 0, 3)
    band = outpaint_mask(sides, (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:2], expected[:, :3] = True, True
    assert torch.equal(band, expected)
    init = shift(codes, sides, model.mask_id)
    assert torch.equal(init != model.mask_id, ~band.expand(2, -1, -1))
    result = sample(model, HaltonScheduler(), torch.tensor([0, 1]), steps=4, init_codes=init)
    assert torch.equal(result.codes[:, 2:, 3:], codes[:, :6, :5]) and (result.codes != model.mask_id).all()


def test_outpainting_both_sides_crops_each_opposite_side_in_whole_cells():
    # a 16x16 image on 8x8 tokens: cells of 2 pixels; top 4 and bottom 2 pixels = 2 and 1 tokens
    assert outpaint_tokens([4, 0, 2, 0], (16, 16), (8, 8)) == (2, 0, 1, 0)
    codes = torch.arange(64).view(1, 8, 8)
    shifted = shift(codes, (2, 0, 1, 0), -1)
    assert torch.equal(shifted[0, 2:7], codes[0, 1:6]) and (shifted[0, :2] == -1).all() and (shifted[0, 7] == -1).all()
    # shifting pixels by whole cells moves every token's pixels as the tokens move: exact for a lossless tokenizer
    tokenizer = PixelTokenizer(17)
    pixels = tokenizer.decode(torch.randint(0, 17, (2, 8, 8)))
    moved = shift(pixels, (3, 1, 0, 2), -1.0)
    kept = (slice(None), slice(3, None), slice(2, 7))
    assert torch.equal(tokenizer.encode(moved)[kept], shift(tokenizer.encode(pixels), (3, 1, 0, 2), 0)[kept])


def test_box_and_mask_image_cover_the_tokens_they_overlap():
    small = box_mask([1, 1, 3, 4], (8, 8), (8, 8))
    assert small.nonzero().tolist() == [[r, c] for r in (1, 2, 3) for c in (1, 2)]
    # cells of 2 pixels: x in [3, 5) touches columns 1 and 2, y in [0, 1) row 0; 0.5 pixel reaches into a cell
    assert box_mask([3, 0, 5, 1], (16, 16), (8, 8)).nonzero().tolist() == [[0, 1], [0, 2]]
    assert box_mask([4, 0, 4.5, 2], (16, 16), (8, 8)).nonzero().tolist() == [[0, 2]]
    assert box_mask([0, 0, 16, 16], (16, 16), (8, 8)).all()
    grown = box_mask([3, 0, 5, 1], (16, 16), (8, 8), dilate=1)
    assert grown.nonzero().tolist() == [[r, c] for r in (0, 1) for c in (0, 1, 2, 3)]
    assert torch.equal(dilate_mask(small, 0), small)
    pixels = torch.zeros(16, 16, dtype=torch.bool)
    pixels[5, 9] = True
    assert image_mask(pixels, (8, 8)).nonzero().tolist() == [[2, 4]]
    assert image_mask(pixels, (8, 8), dilate=1).sum() == 9


@pytest.mark.parametrize("box, message", [
    ([0, 0, 0, 4], "box=[0, 0, 0, 4] is empty or reversed; allowed: x0 < x1 and y0 < y1"),
    ([5, 0, 2, 4], "box=[5, 0, 2, 4] is empty or reversed"),
    ([0, 3, 4, 3], "box=[0, 3, 4, 3] is empty or reversed"),
    ([-1, 0, 2, 2], "box=[-1, 0, 2, 2] is outside the 8x8 image; allowed: 0 <= x0 < x1 <= 8, 0 <= y0 < y1 <= 8"),
    ([0, 0, 9, 2], "box=[0, 0, 9, 2] is outside the 8x8 image"),
    ([0, 0, 2], "box=[0, 0, 2] is not four pixel coordinates; allowed: [x0, y0, x1, y1]"),
    ("0,0,2,2", "box='0,0,2,2' is not four pixel coordinates"),
    ([0, 0, float("nan"), 2], "box=[0, 0, nan, 2] is not four pixel coordinates"),
])
def test_bad_boxes_are_one_line_errors(box, message):
    with pytest.raises(ValueError) as error:
        box_mask(box, (8, 8), (8, 8))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("call, message", [
    (lambda: outpaint_tokens([1, 0, 0, 0], (16, 16), (8, 8)), "outpaint=[1, 0, 0, 0] is not a whole number of token "
                                                                "cells; allowed: multiples of 2"),
    (lambda: outpaint_tokens([0, 0, 0, 0], (8, 8), (8, 8)), "outpaint=[0, 0, 0, 0] extends no side"),
    (lambda: outpaint_tokens([4, 0, 4, 0], (8, 8), (8, 8)), "outpaint=[4, 0, 4, 0] leaves nothing of the 8x8 image"),
    (lambda: outpaint_tokens([-2, 0, 0, 0], (8, 8), (8, 8)), "outpaint=[-2, 0, 0, 0] is not four pixel widths"),
    (lambda: box_mask([0, 0, 2, 2], (8, 8), (8, 8), dilate=-1), "dilate=-1 is out of range"),
    (lambda: image_mask(torch.zeros(8, 8, dtype=torch.bool), (8, 8)), "the mask image has no white pixel"),
])
def test_bad_regions_are_one_line_errors(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("init, steps, message", [
    (torch.full((2, 4, 4), 3), 2, "init_codes hold no mask id (6)"),
    (torch.tensor([6, 6, 6] + [0] * 13).view(1, 4, 4).repeat(2, 1, 1), 4,
     "steps=4 is out of range for an edit of 3 tokens; allowed: 1 to 3"),
    (torch.stack([torch.full((4, 4), 6), torch.zeros(4, 4, dtype=torch.long)]), 2,
     "init_codes sample 1 holds no mask id (6); allowed: at least one token to generate in every sample"),
    (torch.full((2, 4, 4), 9), 2, "init_codes hold code 9; allowed: 0 to 5, or the mask id 6"),
    (torch.full((2, 4, 5), 6), 2, "init_codes of shape [2, 4, 5] (torch.int64) do not fit"),
])
def test_bad_init_codes_are_one_line_errors(init, steps, message):
    with pytest.raises(ValueError) as error:
        sample(StubModel(4, 4), HaltonScheduler(), torch.tensor([0, 1]), steps=steps, init_codes=init)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_read_image_resizes_to_cover_and_center_crops(tmp_path):
    levels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(levels).save(tmp_path / "grey.png")
    exact = read_image(tmp_path / "grey.png", (8, 8), 1)
    assert exact.shape == (1, 8, 8) and torch.equal(exact[0], torch.from_numpy(levels).float() / 127.5 - 1)
    Image.new("RGB", (24, 12), (255, 0, 0)).save(tmp_path / "wide.png")
    wide = read_image(tmp_path / "wide.png", (8, 8), 3)
    assert wide.shape == (3, 8, 8) and torch.allclose(wide[:, 4, 4], torch.tensor([1.0, -1.0, -1.0]))
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    halves = read_image(tmp_path / "mask.png", (8, 8), 3, mask=True)
    assert torch.equal(halves[0], torch.tensor([False] * 4 + [True] * 4))
    (tmp_path / "broken.png").write_text("not an image")
    with pytest.raises(ValueError, match="broken.png is not an image; allowed: PNG"):
        read_image(tmp_path / "broken.png", (8, 8), 1)


def test_composite_pastes_the_original_outside_the_regenerated_cells():
    generated, original = torch.ones(2, 3, 4, 4), -torch.ones(2, 3, 4, 4)
    mask = torch.tensor([[True, False], [False, False]])
    mixed = composite(generated, original, mask)
    assert (mixed[:, :, :2, :2] == 1).all() and mixed.sum() == 2 * 3 * (4 - 12)


def test_sample_py_writes_the_before_masked_after_grid(tiny_run, tmp_path):
    digit = (np.random.default_rng(0).integers(0, 17, (8, 8)) * 255 / 16).round().astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    common = ["experiment=digits", f"checkpoint={ckpt}", *TINY_NET, f"paths.runs_dir={tiny_run}", "steps=4",
              "classes=[3,5]", "per_class=2", f"edit.image={tmp_path / 'digit.png'}"]
    run("sample.py", *common, "edit.box=[2,1,6,5]", f"out_dir={tmp_path / 'out'}")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["halton_steps4_cfg1_seed0_edit-box.png"]
    picture = np.asarray(Image.open(tmp_path / "out" / "halton_steps4_cfg1_seed0_edit-box.png"))
    scale, pad = MIN_CELL // 8, 2
    left = wrap_labels(["3", "5"], MIN_CELL)[1]

    def cell(row, col):  # grey level per pixel of one 8x8 image of the grid
        y, x = pad + row * (MIN_CELL + pad), left + pad + col * (MIN_CELL + pad)
        return picture[y:y + MIN_CELL:scale, x:x + MIN_CELL:scale, 0]
    assert picture.shape == (pad + 2 * (MIN_CELL + pad), left + pad + 4 * (MIN_CELL + pad), 3)
    outside = ~box_mask([2, 1, 6, 5], (8, 8), (8, 8)).numpy()
    for row in range(2):
        assert np.array_equal(cell(row, 0), digit)  # before
        assert np.array_equal(cell(row, 1)[outside], digit[outside]) and not np.array_equal(cell(row, 1), digit)
        for col in (2, 3):  # after: the same outside the box
            assert np.array_equal(cell(row, col)[outside], digit[outside])

    bad = run("sample.py", *common, "edit.box=[0,0,9,9]", f"out_dir={tmp_path / 'bad'}", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: box=[0, 0, 9, 9] is outside the 8x8 image")
    assert not (tmp_path / "bad").exists()
    both = run_in_process("sample.py", *common, "edit.box=[0,0,2,2]", "edit.outpaint=[2,0,0,0]",  # refused before the task
                          f"out_dir={tmp_path / 'bad'}")
    assert both.returncode == 2 and "error: edit.image needs exactly one region, got 2 (box, outpaint)" in both.stderr
    assert not (tmp_path / "bad").exists()
