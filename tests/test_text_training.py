"""The text-to-image path through the entry points: the digits text demo trains (precomputed and online
embeddings), samples from prompts and evaluates with adherence; two-process DDP; the paper's experiment composes
at 479.76M parameters and trains one step on fake shards with precomputed embeddings."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import digits_cache, run, run_in_process
from halton.data.format.chunks import Chunk, bf16_bits, strings, write_shard
from halton.data.format.manifest import Manifest
from halton.data.format.tokenizer_spec import tokenizer_spec
from test_configs import compose_job
from test_text_data import tiny_bert  # noqa: F401 (a fixture)

TINY_TEXT = ["experiment=digits_t2i", "model.net.depth=1", "model.net.c=32", "model.net.hidden_dim=32",
             "model.net.heads=2", "model.net.mlp_dim=64", "data.batch_size=16", "trainer.max_steps=4",
             "trainer.check_val_every_n_epoch=1", "trainer.val_check_interval=2",
             "callbacks.model_checkpoint.every_n_train_steps=2", "model.sample_grid.per_class=1",
             "model.sample_grid.steps=2"]
TINY_NET = TINY_TEXT[1:6]
pytestmark = pytest.mark.xdist_group("text_run")  # one pytest-xdist worker: the text model trains once


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, digits_features):
    root = tmp_path_factory.mktemp("text")
    run("train.py", *TINY_TEXT, f"paths.root_dir={root}", "name=text")
    digits_cache(digits_features, root / "data")  # the evaluations load the digits classifier
    return root


def test_the_text_demo_trains_with_precomputed_embeddings(text_run):
    state = torch.load(text_run / "runs" / "text" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert state["global_step"] == 4
    assert state["state_dict"]["model.transformer.layers.0.mlp.0.weight"].shape == (32, 384)  # MiniLM's width
    assert not any("encoder" in k for k in state["state_dict"])  # the frozen text encoder is not saved
    grids = sorted((text_run / "runs" / "text").rglob("samples/step_*.png"))
    assert grids and Image.open(grids[-1]).size[1] >= 10 * 48  # a row per grid prompt
    manifest = Manifest.load(text_run / "data" / "digits_t2i_shards" / "train")
    assert manifest.text == {"embeddings": "precompute", "encoder": "minilm", "max_length": 16, "width": 384}


def test_sampling_from_prompts(text_run):
    out = text_run / "samples"
    result = run("sample.py", "experiment=digits_t2i", *TINY_NET, f"paths.root_dir={text_run}", "name=text",
                 "prompts=[the digit 3,a handwritten seven]", "per_class=3", "steps=4", f"out_dir={out}",
                 "progression=true", "scheduler=confidence")
    grid = Image.open(out / "confidence_steps4_cfg1_seed0.png")
    assert grid.size[1] == 2 + 2 * (48 + 2)  # one row per prompt
    assert (out / "confidence_steps4_cfg1_seed0_progression.png").is_file()
    assert "reads the requested digit in" in result.stdout + result.stderr


def test_editing_with_a_prompt_keeps_every_pixel_outside_the_mask(text_run, tmp_path):
    from halton.utils.images import MIN_CELL, wrap_labels

    digit = (np.random.default_rng(1).integers(0, 17, (8, 8)) * 255 / 16).round().astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    region = np.zeros((8, 8), dtype=bool)
    region[4:, 2:7] = True  # white = regenerate
    Image.fromarray(region.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    prompts = ["the digit 3", "a handwritten seven"]
    out = tmp_path / "out"
    run("sample.py", "experiment=digits_t2i", *TINY_NET, f"paths.root_dir={text_run}", "name=text",
        f"prompts=[{','.join(prompts)}]", "per_class=2", "steps=4", f"out_dir={out}", "scheduler=random",
        f"edit.image={tmp_path / 'digit.png'}", f"edit.mask={tmp_path / 'mask.png'}")
    assert sorted(p.name for p in out.iterdir()) == ["random_steps4_cfg1_seed0_edit-mask.png"]
    picture = np.asarray(Image.open(out / "random_steps4_cfg1_seed0_edit-mask.png"))
    scale, pad, left = MIN_CELL // 8, 2, wrap_labels(prompts, MIN_CELL)[1]

    def cell(row, col):  # grey level per pixel of one 8x8 image of the grid (before, masked, after, after)
        y, x = pad + row * (MIN_CELL + pad), left + pad + col * (MIN_CELL + pad)
        return picture[y:y + MIN_CELL:scale, x:x + MIN_CELL:scale, 0]
    assert picture.shape[0] == pad + 2 * (MIN_CELL + pad)  # a row per prompt
    afters = [cell(row, col) for row in range(2) for col in (2, 3)]
    for row in range(2):
        assert np.array_equal(cell(row, 0), digit)
    for after in afters:
        assert np.array_equal(after[~region], digit[~region])  # the pixel tokenizer: one token per pixel
    assert any(not np.array_equal(after[region], digit[region]) for after in afters)


def test_evaluation_of_unseen_phrasings_reports_adherence(text_run):
    results = text_run / "eval.csv"
    run("evaluate.py", "experiment=digits_t2i", *TINY_NET, f"paths.root_dir={text_run}", "name=text",
        "num_images=20", "batch_size=10", "steps=4", "prompt_set.phrasings=unseen", f"results={results}",
        "diagnostics=false")
    rows = list(csv.DictReader(open(results)))
    assert len(rows) == 1 and rows[0]["prompts"] == "digits:unseen"
    assert 0 <= float(rows[0]["adherence"]) <= 1 and float(rows[0]["digits_fid"]) > 0


@pytest.mark.slow  # a second text evaluation end to end (unseen phrasings stays in the default run)
def test_evaluation_of_a_prompt_file_with_the_clip_score(text_run, fixtures, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# digits\nthe digit 3\na handwritten seven\n")
    results = tmp_path / "eval.csv"
    run("evaluate.py", "experiment=digits_t2i", *TINY_NET, f"paths.root_dir={text_run}", "name=text",
        "num_images=10", "batch_size=5", "steps=2", "prompt_set.source=file", f"prompt_set.path={prompts}",
        f"clip_model={fixtures / 'tiny_clip'}", f"results={results}", "diagnostics=false", "scheduler=random")
    row = next(csv.DictReader(open(results)))
    assert row["prompts"] == "file:prompts.txt"
    assert abs(float(row["clip_score"])) <= 100 and 0 <= float(row["adherence"]) <= 1  # tiny random CLIP
    grid = next((tmp_path / "grids").glob("random_steps2_*.png"))
    assert Image.open(grid).size[1] == 2 + 2 * (48 + 2)  # a row per distinct prompt


@pytest.mark.slow
def test_online_encoding_trains_too(tmp_path):
    run("train.py", *TINY_TEXT, "data.text_embeddings=online", "trainer.max_steps=2", "model.sample_grid=null",
        f"paths.root_dir={tmp_path}", "name=online")
    assert Manifest.load(tmp_path / "data" / "digits_t2i_shards" / "train").text == {}
    state = torch.load(tmp_path / "runs" / "online" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2


@pytest.mark.slow
def test_two_process_ddp_training_of_the_text_model(tmp_path):
    result = run("train.py", *TINY_TEXT, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "trainer.precision=32-true", "model.sample_grid=null", f"paths.root_dir={tmp_path}", "name=ddp")
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    state = torch.load(tmp_path / "runs" / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4


def test_the_paper_experiment_composes_and_counts_479_76m_parameters():
    cfg = compose_job("train", ["experiment=t2i_l"])
    assert cfg.model.condition.encoder == "google/flan-t5-xl" and cfg.model.net.hidden_dim == 1024
    assert (cfg.model.lr, list(cfg.model.betas), cfg.model.weight_decay) == (5e-5, [0.9, 0.999], 0.05)
    assert (cfg.trainer.gradient_clip_val, cfg.callbacks.ema.decay, cfg.model.label_dropout) == (0.25, 0.999, 0.1)
    with torch.device("meta"):
        module = instantiate(cfg.model)
    assert sum(p.numel() for p in module.model.parameters()) == 479_761_409
    result = run("train.py", "experiment=t2i_l", "--cfg", "job")
    assert "flan-t5-xl" in result.stdout and "hidden_dim: 1024" in result.stdout


@pytest.mark.slow
def test_one_training_step_of_the_paper_experiment_on_fake_shards(tmp_path):
    """Shards with precomputed (random) embeddings in the layout extraction writes; a tiny net of that layout."""
    length, width, samples = 5, 8, 16
    args = ["experiment=t2i_l", "trainer=cpu", "trainer.max_steps=1", "trainer.precision=32-true",
            "data.num_workers=0", "data.batch_size=4", "data.resampled=false", f"data.text_dim={width}",
            f"data.text_length={length}", "model.net.depth=1", "model.net.c=16", "model.net.hidden_dim=16",
            "model.net.heads=2", "model.net.mlp_dim=32", f"data.root={tmp_path / 'codes'}", "logger=csv",
            f"paths.root_dir={tmp_path}", "name=paper", "callbacks.model_checkpoint.every_n_train_steps=1"]
    data_cfg = compose_job("train", args).data
    rng = np.random.default_rng(0)
    folder = tmp_path / "codes" / "train"
    folder.mkdir(parents=True)
    codes = rng.integers(0, data_cfg.codebook_size, (samples, 32, 32), dtype=np.uint16)
    mask = np.arange(length)[None] < rng.integers(1, length + 1, (samples, 1))
    chunk = Chunk(codes, np.full(samples, -1, np.int32), strings(f"k{i}" for i in range(samples)), None,
                  strings(f"caption {i}" for i in range(samples)),
                  bf16_bits(torch.randn(samples, length, width)), mask)
    record = write_shard(folder / "000000.tar", [chunk], source="random")
    Manifest(grid=[32, 32], codebook_size=data_cfg.codebook_size, num_classes=0, chunk_size=samples, flipped=False,
             captions=True, tokenizer=tokenizer_spec(instantiate(data_cfg.tokenizer)), image_size=256,
             source={"kind": "random"}, shards=[record],
             text={"embeddings": "precompute", "encoder": "google/flan-t5-xl", "max_length": length,
                   "width": width}).save(folder)
    run("train.py", *args)
    state = torch.load(tmp_path / "runs" / "paper" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 1
    assert state["state_dict"]["model.transformer.layers.0.mlp.0.weight"].shape == (16, width)


@pytest.mark.parametrize("args,message", [
    (["model.condition.encoder={bert}", "prompt=the digit 3"],
     "text encoder {bert} gives 24-wide embeddings but the model's text width is 384"),
    (["classes=[1,2]"], "classes=[1, 2] is for class-conditional models; experiment=text is text-to-image"),
    (["prompt=' '"], "prompt=' ' is empty"),
])
def test_bad_text_input_is_one_line_exit_2_and_writes_nothing(text_run, tiny_bert, tmp_path, args, message):
    """The encoder's width is refused by the task (a fresh process: the run folder it made is removed again); the
    others before the task, by the checks the entry point runs first (here in this process)."""
    args = [a.format(bert=tiny_bert) for a in args]
    command = ["sample.py", "experiment=digits_t2i", *TINY_NET, f"paths.root_dir={text_run}", "name=text",
               f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'log'}", *args]
    in_task = any(a.startswith("model.condition.encoder=") for a in args)
    result = run(*command, check=False) if in_task else run_in_process(*command)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert message.format(bert=tiny_bert) in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_the_pipeline_draws_from_prompts(text_run, tmp_path):
    """halton.Pipeline on the text demo's run folder: prompts through its frozen encoder, PIL images; its export
    (the encoder recorded by name in pipeline.json) draws the same codes."""
    from halton import Pipeline

    pipe = Pipeline.from_pretrained(text_run / "runs" / "text")
    out = pipe(prompts=["the digit 3", "a handwritten seven"], per_condition=2, steps=4, seed=0)
    assert len(out.images) == 4 and out.images[0].size == (8, 8) and out.codes.shape == (4, 8, 8)
    assert pipe.recipe()["condition"]["encoder"] == "minilm"
    again = Pipeline.from_pretrained(pipe.save_pretrained(tmp_path / "export"))
    call = {"prompts": ["the digit 3", "a handwritten seven"], "per_condition": 2, "steps": 4, "seed": 0}
    assert torch.equal(again(**call).codes, out.codes)
    with pytest.raises(ValueError, match="classes are for class-conditional models"):
        pipe(classes=[3])
