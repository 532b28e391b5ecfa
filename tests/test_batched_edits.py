"""Batched edits whose samples mask different numbers of tokens (issue 22, point 4): every sample splits its own
masked count over the steps by the schedule rule, keeps its known tokens bit for bit, and order schedulers walk
their order restricted to each sample's region; a batch of equal counts is the sampler of before."""

import pytest
import torch

from halton.sampling import ConfidenceScheduler, HaltonScheduler, RandomScheduler, sample, tokens_per_step
from halton.sampling.confidence import reference_tokens_per_step
from test_editing import class_model, text_model
from test_sampling import StubModel

SCHEDULERS = {"halton": HaltonScheduler(randomize=False), "halton-randomized": HaltonScheduler(),
              "confidence": ConfidenceScheduler(), "confidence-reference": ConfidenceScheduler(mode="reference"),
              "random": RandomScheduler()}


def counts_rule(name):
    rule = reference_tokens_per_step if name == "confidence-reference" else tokens_per_step
    return lambda size, steps: [int(count) for count in rule(size, steps)]


def regions(grid, sizes, seed=3):
    """[len(sizes), h, w] masks, sample b masking ``sizes[b]`` random positions of its own."""
    generator = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    rows = [torch.zeros(n, dtype=torch.bool).index_fill_(0, torch.randperm(n, generator=generator)[:size], True)
            for size in sizes]
    return torch.stack(rows).view(len(sizes), *grid)


def edit(model, region, seed=2):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, model.codebook_size, region.shape, generator=generator)
    return torch.where(region, model.mask_id, codes)


def check_run(name, model, condition, region, steps, **options):
    """Runs one mixed batch with history and checks what every sample must get; returns the result."""
    init = edit(model, region)
    known = ~region
    result = sample(model, SCHEDULERS[name], condition, steps=steps, seed=4, init_codes=init, return_history=True,
                    **options)
    assert torch.equal(result.codes[known], init[known])  # kept bit for bit
    assert (result.codes != model.mask_id).all() and result.codes.max() < model.codebook_size
    unmasked = torch.stack(result.unmasked_per_step)  # [steps, B, H, W]
    assert torch.equal(unmasked.sum(0), region.long())  # each region token once, nothing outside
    per_step = unmasked.flatten(2).sum(-1).T.tolist()   # [B][steps]
    assert per_step == [counts_rule(name)(int(size), steps) for size in region.flatten(1).sum(1)]
    for codes, predictions, new in zip(result.codes_per_step, result.predictions_per_step, result.unmasked_per_step):
        assert torch.equal(codes[known], init[known])
        assert (predictions[known] == model.mask_id).all()            # no prediction shown at a kept token
        assert torch.equal(codes[new], predictions[new])               # what was unmasked is what was drawn
    assert all(torch.isfinite(entropy).all() for entropy in result.entropy_per_step)
    for filled in result.filled.values():
        assert torch.equal(filled[known], init[known]) and (filled != model.mask_id).all()
    return result


@pytest.mark.parametrize("name", SCHEDULERS)
def test_one_token_next_to_a_whole_grid_in_one_step(name):
    model = StubModel(4, 4)
    region = torch.zeros(3, 4, 4, dtype=torch.bool)
    region[0, 2, 1] = True    # a single masked token
    region[1] = True          # every token
    region[2, 1:3, :] = True  # 8 tokens
    check_run(name, model, torch.tensor([0, 1, 2]), region, steps=1, cfg_weight=1.5)


@pytest.mark.parametrize("kind", ["stub", "class", "text"])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_mixed_counts_each_get_their_own_schedule(name, kind):
    if kind == "stub":
        model, condition = StubModel(8, 8), torch.tensor([0, 1, 2, 0])
    else:
        model, condition = class_model() if kind == "class" else text_model()
    region = regions(model.grid, [3, model.grid[0] * model.grid[1], 9, 20])
    check_run(name, model, condition, region, steps=3, cfg_weight=1.5, fill_steps=(0, 1))


@pytest.mark.parametrize("name", ["halton", "halton-randomized", "random"])
def test_order_schedulers_walk_their_order_restricted_to_each_region(name):
    model, steps, seed = StubModel(8, 8), 4, 6
    region = regions((8, 8), [4, 40, 17])
    scheduler = SCHEDULERS[name]
    full = scheduler.order(3, 8, 8, torch.Generator().manual_seed(seed), torch.device("cpu"))  # the first draw
    result = sample(model, scheduler, torch.tensor([0, 1, 2]), steps=steps, seed=seed, init_codes=edit(model, region),
                    return_history=True)
    for b in range(3):
        restricted = [p for p in full[b].tolist() if region[b].flatten()[p]]
        done = 0
        for count, unmasked in zip(tokens_per_step(len(restricted), steps).tolist(), result.unmasked_per_step):
            assert set(unmasked[b].flatten().nonzero()[:, 0].tolist()) == set(restricted[done:done + count])
            done += count


@pytest.mark.parametrize("name", ["confidence", "confidence-reference"])
def test_confidence_unmasks_each_samples_most_confident_tokens(name):
    # without noise the confidence is the probability of the drawn token (the history's prediction): each step
    # keeps, per sample, its own count of still-masked positions with the highest one
    n, vocab = 16, 6
    table = 3 * torch.randn(n, vocab + 1, generator=torch.Generator().manual_seed(0))
    model = StubModel(4, 4, codebook_size=vocab, cond_logits=table, uncond_logits=table)
    probs = table[:, :vocab].softmax(-1)
    scheduler = ConfidenceScheduler(r_temp=0.0, mode="keep" if name == "confidence" else "reference")
    region = regions((4, 4), [5, 16, 2])
    result = sample(model, scheduler, torch.tensor([0, 1, 2]), steps=2, cfg_weight=0.0,
                    init_codes=edit(model, region), return_history=True)
    masked = region.flatten(1).clone()
    for step, (unmasked, drawn) in enumerate(zip(result.unmasked_per_step, result.predictions_per_step)):
        for b in range(3):
            count = counts_rule(name)(int(region[b].sum()), 2)[step]
            left = masked[b].nonzero()[:, 0]
            confidence = probs[left, drawn[b].flatten()[left]]
            expected = left[confidence.argsort(descending=True)[:count]]
            assert set(unmasked[b].flatten().nonzero()[:, 0].tolist()) == set(expected.tolist())
        masked &= ~unmasked.flatten(1)


def test_halton_fixed_order_draws_each_sample_as_alone_when_the_draw_is_certain():
    # top_k=1 leaves nothing to chance, so the batch's random stream does not matter: each sample of a mixed batch
    # equals the same sample drawn alone (its positions, counts and logits are wired to the right sample)
    model = StubModel(8, 8)
    region = regions((8, 8), [5, 64, 23, 11])
    init, labels = edit(model, region), torch.tensor([0, 1, 2, 1])
    batch = sample(model, HaltonScheduler(randomize=False), labels, steps=5, cfg_weight=2.0, top_k=1,
                   init_codes=init).codes
    for b in range(4):
        alone = sample(model, HaltonScheduler(randomize=False), labels[b:b + 1], steps=5, cfg_weight=2.0, top_k=1,
                       init_codes=init[b:b + 1]).codes
        assert torch.equal(batch[b], alone[0])


def test_the_cfg_interval_is_each_samples_own_time():
    # sample 0 (2 tokens, 2 steps) is at time 1 then 1/2; sample 1 (16 tokens) at 1 then 1 - c0/16. With the
    # interval (0.6, 1] the second step guides sample 1 only: a certain draw (top_k=1) shows which logits it used
    model, steps = StubModel(4, 4), 2
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, 0, :2] = True
    region[1] = True
    first = tokens_per_step(16, steps).tolist()[0]
    assert 1 - first / 16 > 0.6
    init, weight = edit(model, region), 3.0
    result = sample(model, HaltonScheduler(randomize=False), torch.tensor([0, 1]), steps=steps, cfg_weight=weight,
                    cfg_interval=(0.6, 1.0), top_k=1, init_codes=init, return_history=True)
    vocab = model.codebook_size
    cond, uncond = model.cond_logits[:, :vocab], model.uncond_logits[:, :vocab]
    guided = ((1 + weight) * cond - weight * uncond).argmax(-1)
    alone = cond.argmax(-1)
    assert result.nfe_per_step == [2, 2]
    second = result.unmasked_per_step[1].flatten(1)
    codes = result.codes.flatten(1)
    assert torch.equal(codes[0][second[0]], alone[second[0]]) and torch.equal(codes[1][second[1]], guided[second[1]])
    first_step = result.unmasked_per_step[0].flatten(1)
    assert torch.equal(codes[0][first_step[0]], guided[first_step[0]])


# The codes of a batch of equal masked counts (each sample its own region of 5 tokens), as the sampler gave them
# before samples could mask different numbers: an equal-count batch must still take exactly that path.
EQUAL_INIT = [[6, 6, 6, 6, 6, 4, 4, 5, 0, 4, 1, 0, 5, 2, 0, 0], [3, 0, 5, 1, 3, 6, 0, 6, 2, 6, 1, 6, 5, 0, 0, 6],
              [5, 0, 4, 6, 1, 2, 6, 1, 6, 5, 0, 5, 6, 4, 6, 2]]
EQUAL_CODES = {
    "halton": [[5, 3, 4, 2, 1, 4, 4, 5, 0, 4, 1, 0, 5, 2, 0, 0], [3, 0, 5, 1, 3, 4, 0, 1, 2, 3, 1, 0, 5, 0, 0, 5],
               [5, 0, 4, 2, 1, 2, 3, 1, 3, 5, 0, 5, 5, 4, 5, 2]],
    "halton-randomized": [[5, 4, 4, 2, 1, 4, 4, 5, 0, 4, 1, 0, 5, 2, 0, 0],
                          [3, 0, 5, 1, 3, 2, 0, 0, 2, 3, 1, 0, 5, 0, 0, 5],
                          [5, 0, 4, 2, 1, 2, 3, 1, 3, 5, 0, 5, 5, 4, 1, 2]],
    "confidence": [[1, 1, 4, 2, 1, 4, 4, 5, 0, 4, 1, 0, 5, 2, 0, 0], [3, 0, 5, 1, 3, 2, 0, 0, 2, 3, 1, 0, 5, 0, 0, 5],
                   [5, 0, 4, 2, 1, 2, 3, 1, 3, 5, 0, 5, 5, 4, 5, 2]],
    "confidence-reference": [[4, 4, 4, 2, 1, 4, 4, 5, 0, 4, 1, 0, 5, 2, 0, 0],
                             [3, 0, 5, 1, 3, 3, 0, 0, 2, 3, 1, 0, 5, 0, 0, 3],
                             [5, 0, 4, 2, 1, 2, 3, 1, 3, 5, 0, 5, 5, 4, 5, 2]],
    "random": [[1, 4, 4, 2, 1, 4, 4, 5, 0, 4, 1, 0, 5, 2, 0, 0], [3, 0, 5, 1, 3, 1, 0, 0, 2, 4, 1, 0, 5, 0, 0, 5],
               [5, 0, 4, 2, 1, 2, 2, 1, 3, 5, 0, 5, 5, 4, 5, 2]],
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_equal_counts_in_different_regions_give_the_codes_of_before(name):
    init = torch.tensor(EQUAL_INIT).view(3, 4, 4)
    result = sample(StubModel(4, 4), SCHEDULERS[name], torch.tensor([0, 1, 2]), steps=3, cfg_weight=1.5, seed=7,
                    init_codes=init)
    assert result.codes.flatten(1).tolist() == EQUAL_CODES[name]


@pytest.mark.parametrize("options, message", [
    ({"steps": 4}, ("steps=4 is out of range for init_codes sample 1, which masks 3 tokens; allowed: 1 to 3 (the "
                    "fewest masked tokens of any sample)")),
    ({"steps": 2, "cache_refresh": 2}, ("cache_refresh=2 needs the same number of masked tokens in every sample; "
                                        "these init_codes mask 3 to 16; allowed: cache_refresh=None")),
])
def test_mixed_counts_refuse_in_one_line(options, message):
    model = StubModel(4, 4)
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0] = True
    region[1, 0, :3] = True
    with pytest.raises(ValueError) as error:
        sample(model, HaltonScheduler(), torch.tensor([0, 1]), init_codes=edit(model, region), **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["halton", "confidence", "random"])
def test_mixed_count_steps_never_synchronise(name):
    """The per-run set-up may synchronise a fixed number of times; the steps add none: 4 and 16 steps make the
    same number of synchronisations, with per-sample guidance (the CFG interval) and fill steps."""
    from halton.models import MaskTransformer
    from test_cuda import syncs

    model = MaskTransformer(64, 8, 64, 2, 4, 128, num_classes=10).cuda()
    region = regions((8, 8), [20, 64, 33, 40]).cuda()
    init, labels = edit(model, region), torch.arange(4, device="cuda")

    def run(steps):
        return sample(model, SCHEDULERS[name], labels, steps=steps, cfg_weight=1.0, cfg_interval=(0.3, 0.9),
                      init_codes=init, fill_steps=(1,))
    run(4)
    assert len(syncs(lambda: run(4))) == len(syncs(lambda: run(16)))


# sample.py's several images, each with its own region (edit.images with edit.boxes or edit.masks)

@pytest.mark.parametrize("values, message", [
    ({"boxes": [[0, 0, 4, 4]]}, "edit.boxes needs the images to edit; pass edit.images=[PATH,...]"),
    ({"images": ["a.png"], "boxes": [[0, 0, 4, 4]], "box": [0, 0, 4, 4]},
     "edit.images takes its regions from edit.boxes or edit.masks, not edit.box"),
    ({"images": ["a.png"], "image": "b.png", "masks": ["m.png"]},
     "edit.images takes its regions from edit.boxes or edit.masks, not edit.image"),
    ({"images": "a.png", "boxes": [[0, 0, 4, 4]]}, "edit.images='a.png' is not a list of images"),
    ({"images": ["a.png", "b.png"]}, "edit.images needs exactly one region list, got 0 (none)"),
    ({"images": ["a.png"], "boxes": [[0, 0, 4, 4]], "masks": ["m.png"]},
     "edit.images needs exactly one region list, got 2 (boxes, masks)"),
    ({"images": ["a.png", "b.png"], "boxes": [[0, 0, 4, 4]]},
     "edit.boxes gives 1 regions for 2 images; allowed: one region per image"),
    ({"images": ["a.png", "b.png"], "boxes": [[0, 0, 4, 4], [0, 0, 4]]},
     "edit.boxes.1=[0, 0, 4] is not a box; allowed: [x0,y0,x1,y1] in pixels"),
    ({"images": ["a.png"], "masks": [3]}, "edit.masks.0=3 is not an image path"),
])
def test_several_image_rules(values, message):
    from halton.options import EditOptions
    from halton.options.rules import Invalid, under

    with pytest.raises(Invalid) as error, under("edit."):
        EditOptions(**values)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    EditOptions(images=["a.png", "b.png"], boxes=[[0, 0, 4, 4], [1, 1, 2, 2]], dilate=1, composite=True)
    EditOptions(images=["a.png"], masks=["m.png"])


def test_several_images_each_keep_their_own_region(tmp_path):
    from PIL import Image

    from halton.sampling.editing import box_mask, edit_grid, prepare_edit, prepare_edits
    from halton.tokenizers import PixelTokenizer

    model, _ = class_model()
    tokenizer = PixelTokenizer(model.codebook_size)
    generator = torch.Generator().manual_seed(1)
    paths = []
    for index in range(2):
        pixels = torch.randint(0, 17, (8, 8), generator=generator) * 255 // 16
        paths.append(tmp_path / f"digit{index}.png")
        Image.fromarray(pixels.to(torch.uint8).numpy()).save(paths[-1])
    boxes = [[2, 1, 6, 5], [0, 0, 1, 1]]  # 16 tokens, and a single one
    edit = prepare_edits(model, tokenizer, paths, boxes=boxes)
    assert edit.init_codes.shape == (2, 8, 8) and edit.mask.shape == (2, 8, 8) and edit.region == "box"
    for index in range(2):  # each row is that image's own edit
        alone = prepare_edit(model, tokenizer, paths[index], box=boxes[index])
        assert torch.equal(edit.init_codes[index], alone.init_codes[0]) and torch.equal(edit.mask[index], alone.mask)
    assert edit.mask.flatten(1).sum(1).tolist() == [16, 1]
    labels = torch.tensor([0, 3, 7])
    start, init, mask = edit.per_row(6)  # image by image: three classes each
    result = sample(model, HaltonScheduler(), labels.repeat(2), steps=1, cfg_weight=1.0, init_codes=init)
    assert torch.equal(result.codes[~mask], init[~mask]) and (result.codes != model.mask_id).all()
    images = tokenizer.decode(result.codes)
    pasted = edit.finish(images, paste_back=True)
    for row in range(6):  # the original pixels outside each row's own box
        outside = ~box_mask(boxes[row // 3], (8, 8), (8, 8))
        assert torch.equal(pasted[row, 0][outside], edit.start[row // 3, 0][outside])
    grid = edit_grid(edit, pasted, ["0", "3", "7"] * 2, 1)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3
    with pytest.raises(ValueError, match="^2 images and 1 boxes; allowed: at least one image and one region per"):
        prepare_edits(model, tokenizer, paths, boxes=boxes[:1])
    masks = [torch.zeros(8, 8, dtype=torch.bool) for _ in range(2)]
    masks[0][:, :3], masks[1][7, 7] = True, True  # mask images (white = regenerate): 24 tokens, and one
    Image.fromarray(masks[1].to(torch.uint8).numpy() * 255).save(tmp_path / "mask1.png")
    by_mask = prepare_edits(model, tokenizer, paths, masks=[masks[0], tmp_path / "mask1.png"])
    assert torch.equal(by_mask.mask, torch.stack(masks)) and by_mask.region == "mask"
    assert by_mask.init_codes.eq(model.mask_id).flatten(1).sum(1).tolist() == [24, 1]


@pytest.mark.slow
def test_sample_py_edits_several_images_each_in_its_own_box(tiny_run, tmp_path):
    import numpy as np
    from PIL import Image

    from conftest import TINY_NET, run, run_in_process
    from halton.sampling.editing import box_mask
    from halton.utils.images import MIN_CELL, wrap_labels

    rng = np.random.default_rng(0)
    digits = [(rng.integers(0, 17, (8, 8)) * 255 / 16).round().astype(np.uint8) for _ in range(2)]
    for index, digit in enumerate(digits):
        Image.fromarray(digit).save(tmp_path / f"digit{index}.png")
    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    boxes = [[2, 1, 6, 5], [0, 0, 1, 1]]
    common = ["experiment=digits", f"checkpoint={ckpt}", *TINY_NET, f"paths.runs_dir={tiny_run}", "steps=1",
              "classes=[3,5]", "per_class=2", f"edit.images=[{tmp_path / 'digit0.png'},{tmp_path / 'digit1.png'}]"]
    run("sample.py", *common, "edit.boxes=[[2,1,6,5],[0,0,1,1]]", f"out_dir={tmp_path / 'out'}")
    picture = np.asarray(Image.open(tmp_path / "out" / "halton_steps1_cfg1_seed0_edit-box.png"))
    scale, pad = MIN_CELL // 8, 2
    left = wrap_labels(["3", "5"] * 2, MIN_CELL)[1]

    def cell(row, col):  # grey level per pixel of one 8x8 image of the grid
        y, x = pad + row * (MIN_CELL + pad), left + pad + col * (MIN_CELL + pad)
        return picture[y:y + MIN_CELL:scale, x:x + MIN_CELL:scale, 0]
    assert picture.shape == (pad + 4 * (MIN_CELL + pad), left + pad + 4 * (MIN_CELL + pad), 3)
    for row in range(4):  # image 0 for classes 3 and 5, then image 1
        digit, outside = digits[row // 2], ~box_mask(boxes[row // 2], (8, 8), (8, 8)).numpy()
        assert np.array_equal(cell(row, 0), digit)  # before
        for col in (2, 3):  # after: the same outside that image's own box
            assert np.array_equal(cell(row, col)[outside], digit[outside])
    missing = run_in_process("sample.py", *common, f"edit.masks=[{tmp_path / 'digit0.png'},{tmp_path / 'no.png'}]",
                             f"out_dir={tmp_path / 'bad'}")
    assert missing.returncode == 2 and f"error: edit.masks.1 not found: {tmp_path / 'no.png'}" in missing.stderr
    from test_bad_input import png_header

    (tmp_path / "bomb.png").write_bytes(png_header(10000, 10000))
    common[-1] = f"edit.images=[{tmp_path / 'digit0.png'},{tmp_path / 'bomb.png'}]"
    bomb = run_in_process("sample.py", *common, "edit.boxes=[[2,1,6,5],[0,0,1,1]]", f"out_dir={tmp_path / 'bad'}")
    assert bomb.returncode == 2 and (f"error: edit.images.1={tmp_path / 'bomb.png'} has 100000000 pixels"
                                     in bomb.stderr)
    assert not (tmp_path / "bad").exists()
