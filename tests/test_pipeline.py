"""halton.Pipeline: one call from a trained model to PIL images, loaded from a train.py run folder, a checkpoint in
one, an export (here or on the hub) or a released checkpoint with its experiment. (The README's quick start runs in
tests/test_docs_examples.py.)"""


import pytest
import torch
from conftest import TINY_NET
from PIL import Image
from test_hub import hub_cache, offline_cache  # noqa: F401 (a fixture)

from halton import Pipeline, PipelineOutput
from halton.models.loading import load_model
from halton.sampling import HaltonScheduler, sample


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.from_pretrained(tiny_run / "tiny")


def test_a_run_folder_draws_pil_images_as_sample_does(pipe, tiny_run):
    out = pipe(classes=[3, 7], per_condition=2, steps=8, cfg_weight=1.0, seed=5)
    assert isinstance(out, PipelineOutput) and len(out.images) == 4
    assert all(isinstance(i, Image.Image) and i.size == (8, 8) and i.mode == "L" for i in out.images)
    assert out.codes.shape == (4, 8, 8) and out.nfe_per_image == 16 and out.nfe_per_step == [2] * 8
    # the same codes as the sampler called by hand on the same weights, scheduler and options
    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    from test_configs import compose_job

    net = load_model(str(ckpt), compose_job("sample", ["experiment=digits", *TINY_NET]).model.net)
    labels = torch.tensor([3, 3, 7, 7])
    expected = sample(net, HaltonScheduler(), labels, steps=8, cfg_weight=1.0, seed=5).codes
    assert torch.equal(out.codes, expected.reshape(4, 8, 8))
    pixels = torch.tensor(list(out.images[0].getdata())).reshape(8, 8)
    assert torch.equal(pixels, (out.codes[0] * 255 / 16).round().long())  # grey level of each code
    # a checkpoint in the run folder; the defaults are the run's sample-grid settings (4 steps, CFG 1)
    again = Pipeline.from_pretrained(ckpt)(classes=3, seed=1)
    assert again.nfe_per_image == 2 * 4 and len(again.images) == 1


def test_options_schedulers_and_edits(pipe):
    first = pipe(classes=[1], steps=4, seed=0, scheduler="confidence", temp_max=2.0, top_k=5)
    assert first.nfe_per_image == 7  # Confidence ramps its guidance up from 0: its first step is unguided
    unguided = pipe(classes=[1], steps=4, cfg_weight=0.0, scheduler={"name": "random"})
    assert unguided.nfe_per_step == [1] * 4
    exact = pipe(classes=[1], steps=4, cfg_weight=0.0, scheduler={"name": "random"}, cache_refresh=1)
    assert torch.equal(exact.codes, unguided.codes)
    assert exact.position_layers_per_image == unguided.position_layers_per_image
    cached = pipe(classes=[1], steps=4, cfg_weight=0.0, scheduler={"name": "random"}, cache_refresh=4)
    assert cached.position_layers_per_image < unguided.position_layers_per_image
    edited = pipe(classes=[2, 5], image=first.images[0], box=[0, 0, 4, 4], steps=2, seed=0)
    kept = first.codes[0].clone()
    kept[:4, :4] = -1
    for codes in edited.codes:  # the tokens outside the box are the image's, bit for bit
        assert torch.equal(torch.where(kept == -1, -1, codes), kept)
    with pytest.raises(ValueError, match="^steps=99 is out of range; allowed: 1 to 64"):
        pipe(classes=[1], steps=99)
    with pytest.raises(ValueError, match="^per_condition=0 is out of range; allowed: >= 1"):
        pipe(classes=[1], per_condition=0)
    with pytest.raises(ValueError, match="prompts are for text-to-image models"):
        pipe(prompt="a three")


def test_an_export_loads_alone_here_and_from_the_hub(pipe, tmp_path, offline_cache):  # noqa: F811
    import json

    folder = pipe.save_pretrained(tmp_path / "export")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", "halton_export.json", "model.safetensors", "pipeline.json"]
    recipe = json.loads((folder / "pipeline.json").read_text())
    assert recipe["tokenizer"] == {"_target_": "halton.tokenizers.PixelTokenizer", "levels": 17}
    assert recipe["scheduler"]["name"] == "halton" and recipe["sampling"]["steps"] == 4
    card = (folder / "README.md").read_text()
    assert "Halton Scheduler for Masked Generative Image Transformer" in card and "Pipeline.from_pretrained" in card
    expected = pipe(classes=[4], per_condition=3, seed=2).codes
    assert torch.equal(Pipeline.from_pretrained(folder)(classes=[4], per_condition=3, seed=2).codes, expected)
    hub_cache(offline_cache, "someone/digits", {p.name: p for p in folder.iterdir()}, ref="v1")
    from_hub = Pipeline.from_pretrained("hf://someone/digits@v1")
    assert torch.equal(from_hub(classes=[4], per_condition=3, seed=2).codes, expected)
    (folder / "pipeline.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds a model but no pipeline.json"):
        Pipeline.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="is not a train.py run folder or a checkpoint in one"):
        Pipeline.from_pretrained(tmp_path)


def test_any_checkpoint_loads_with_an_experiment(pipe, tiny_run):
    """A checkpoint with ``experiment=`` (how a released .pth is named: experiment="hmaskgit_t_256" gives its heads
    and tokenizer) composed and checked as sample.py's command line is: the same model; a bad override is
    sample.py's one line."""
    from halton.options import Invalid

    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    composed = Pipeline.from_pretrained(ckpt, experiment="digits", overrides=[*TINY_NET, "steps=4"])
    assert torch.equal(composed(classes=[2], seed=3).codes, pipe(classes=[2], seed=3).codes)
    with pytest.raises(Invalid, match="^steps=0 is out of range; allowed: 1 to 64"):
        Pipeline.from_pretrained(ckpt, experiment="digits", overrides=[*TINY_NET, "steps=0"])
