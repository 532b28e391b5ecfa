"""sample.py, evaluate.py and the app draw through halton.Pipeline: sample.py's pictures are a pipeline call's for the
same config, the evaluation's batches are Pipeline.draw's with their own generators, and the app's Studio draws
every request through its pipeline. In-process, on random weights of experiment=digits with conftest's TINY_NET."""

import logging

import numpy as np
import pytest
import torch
from conftest import TINY_NET
from hydra.utils import instantiate
from PIL import Image
from test_configs import compose_job

from halton import Pipeline
from halton.app import Studio
from halton.entrypoints.sample import main as sample_main
from halton.evaluation.runner import batch_seed, generate_and_extract
from halton.sampling.editing import box_mask, paint_tokens, prepare_edits
from halton.utils.images import class_grid, progression_grid


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights of experiment=digits with TINY_NET, in train.py's checkpoint format."""
    torch.manual_seed(0)
    net = instantiate(compose_job("sample", ["experiment=digits", *TINY_NET]).model.net)
    path = tmp_path_factory.mktemp("pipeline_entrypoints") / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def overrides(checkpoint, *more):
    return ["experiment=digits", f"checkpoint={checkpoint}", *TINY_NET, "device=cpu", *more]


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return Pipeline.from_config(compose_job("sample", overrides(checkpoint, "scheduler=confidence")))


def picture(grid: torch.Tensor) -> np.ndarray:
    return grid.permute(1, 2, 0).numpy()


def test_sample_py_writes_what_its_pipeline_draws(checkpoint, tmp_path, caplog):
    command = overrides(checkpoint, "scheduler=confidence", "steps=4", "cfg_weight=2", "seed=7", "classes=[3,5]",
                        "per_class=2", "progression=true", "report_accuracy=false", f"out_dir={tmp_path / 'out'}")
    cfg = compose_job("sample", command)
    with caplog.at_level(logging.INFO, logger="halton.sample"):
        sample_main(cfg)  # sample.py's task on the composed config (its command line: tests/test_editing.py ...)
    pipe = Pipeline.from_config(cfg)
    assert (pipe.scheduler.name, pipe.sampling.steps, pipe.sampling.cfg_weight, pipe.sampling.seed) == (
        "confidence", 4, 2.0, 7)
    out = pipe([3, 5], per_condition=2, return_history=True)
    assert out.values == [3, 5] and out.codes.shape == (4, 8, 8) and out.pixels.shape == (4, 1, 8, 8)
    assert len(out.codes_per_step) == 4 and torch.equal(out.codes_per_step[-1], out.codes)
    assert (out.codes_per_step[0] == pipe.model.mask_id).any() and out.edit is None
    written = tmp_path / "out" / "confidence_steps4_cfg2_seed7.png"
    assert np.array_equal(np.asarray(Image.open(written)), picture(class_grid(out.pixels, 2, 2, ["3", "5"])))
    painted = [paint_tokens(pipe.decode(codes[[0, 2]]), codes[[0, 2]] == pipe.model.mask_id)
               for codes in out.codes_per_step]
    steps = np.asarray(Image.open(tmp_path / "out" / "confidence_steps4_cfg2_seed7_progression.png"))
    assert np.array_equal(steps, picture(progression_grid(painted, ["1", "2", "3", "4"])))
    assert f"{out.nfe_per_image} network evaluations per image" in caplog.messages[0]


def test_an_edit_of_several_images_draws_each_with_its_own_region(pipe):
    first = pipe([1, 2], steps=4, seed=0)
    boxes = [[2, 1, 6, 5], [0, 0, 4, 4]]
    edit = prepare_edits(pipe.model, pipe.tokenizer, first.images, boxes=boxes)
    out = pipe([3, 5], per_condition=2, edit=edit, steps=4, seed=1)
    assert out.edit is edit and out.values == [3, 5] and out.codes.shape == (8, 8, 8)
    for image, box in enumerate(boxes):  # image by image: every class for each, the tokens outside its box kept
        outside = ~box_mask(box, (8, 8), (8, 8))
        for codes in out.codes[4 * image:4 * (image + 1)]:
            assert torch.equal(codes[outside], first.codes[image][outside])
            assert not torch.equal(codes, first.codes[image])
    with pytest.raises(ValueError, match="^image= and edit= both given"):
        pipe([3], image=first.images[0], box=[0, 0, 2, 2], edit=edit)


def test_draw_takes_a_condition_already_made_and_a_generator(pipe):
    called = pipe([3, 5], per_condition=2, steps=4, seed=7)
    condition = pipe.condition.make([3, 3, 5, 5], pipe.device)
    drawn = pipe.draw(condition, generator=torch.Generator().manual_seed(7), steps=4)
    assert torch.equal(drawn.codes, called.codes)
    seeded = pipe([3, 5], per_condition=2, steps=4, generator=torch.Generator().manual_seed(7), seed=0)
    assert torch.equal(seeded.codes, called.codes)  # a generator given is the random stream, whatever the seed
    filled = pipe.draw(condition, steps=4, fill_steps=(1,)).filled[1]
    assert (filled != pipe.model.mask_id).all()


class Pixels(torch.nn.Module):
    """An extractor whose features are the pixels themselves."""

    def forward(self, images):
        return {"features": images.flatten(1), "logits": images.flatten(1)[:, :3]}


def test_the_evaluation_draws_each_batch_through_the_pipeline_with_its_own_seed(pipe):
    values = [0, 1, 2, 3, 4, 5]
    generated = generate_and_extract(pipe, {"pixels": Pixels()}, values, 4, 3, 0, 1, [2], False)
    assert sorted(generated.features) == [0, 1] and sorted(generated.features[1]) == [1, pipe.sampling.steps - 1]
    for index, batch in enumerate([values[:4], values[4:]]):
        generator = torch.Generator().manual_seed(batch_seed(3, index))
        result = pipe.draw(pipe.condition.make(batch, pipe.device), generator=generator, fill_steps=(1,))
        for step, codes in ((pipe.sampling.steps - 1, result.codes), (1, result.filled[1])):
            assert torch.equal(generated.features[index][step]["pixels/features"], pipe.decode(codes).flatten(1))


def test_the_app_draws_every_request_through_its_pipeline(checkpoint, monkeypatch):
    studio = Studio.from_config(compose_job("app", overrides(checkpoint, "scheduler=random", "cache_refresh=2")))
    assert isinstance(studio.pipeline, Pipeline) and studio.net is studio.pipeline.model
    assert studio.schedulers["random"] is studio.pipeline.scheduler and studio.default_scheduler == "random"
    assert studio.options is studio.pipeline.sampling and studio.options.cache_refresh == 2
    draws = []
    draw = studio.pipeline.draw
    monkeypatch.setattr(studio.pipeline, "draw", lambda *args, **kwargs: draws.append(kwargs) or draw(*args, **kwargs))
    settings = studio.settings(["3", "5"], "halton", 4, 1.5, 1.0, 2.0, "9", 11, 2)
    grid, record, _ = studio.generate(settings)
    expected = studio.pipeline([3, 5], per_condition=2, scheduler=studio.schedulers["halton"], steps=4,
                               cfg_weight=1.5, temp_max=2.0, top_k=9, seed=11)
    assert np.array_equal(grid, picture(class_grid(expected.pixels, 2, 2, ["3", "5"])))
    assert torch.equal(record.codes_per_step[-1], expected.codes)
    studio.compare(settings, ["halton", "confidence"])
    image = studio.first_sample(record)
    studio.edit(settings, image, None, "0,0,4,4", 0, False)
    assert [d["scheduler"].name for d in draws] == ["halton", "halton", "halton", "confidence", "halton"]
    assert draws[-1]["init_codes"] is not None and draws[0]["return_history"]
