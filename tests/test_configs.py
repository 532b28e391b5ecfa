"""Every experiment composes with every entry point, and every choice of the training config groups trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import TINY_NET, run

from halton.cli import CONFIG_DIR, choices
from halton.data import Manifest
from halton.data.format.chunks import Chunk, strings, write_shard
from halton.data.format.tokenizer_spec import tokenizer_spec

ENTRY_POINTS = ("train", "sample", "evaluate")


def compose_job(entry: str, overrides: list[str]):
    """What ``python <entry>.py <overrides> --cfg job`` prints, as a resolved config."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(entry, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("experiment", choices("experiment"))
def test_every_experiment_composes_with_every_entry_point(entry, experiment):
    cfg = compose_job(entry, [f"experiment={experiment}"])
    assert cfg.name == experiment
    instantiate(cfg.scheduler)
    instantiate(cfg.data)  # reads nothing until setup
    with torch.device("meta"):  # the whole model, even the 705M one, without allocating it
        net = instantiate(cfg.model if entry == "train" else cfg.model.net)
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_headline_experiment_composes_on_the_command_line(entry):
    result = run(f"{entry}.py", "experiment=c2i_xl", "scheduler=confidence", "--cfg", "job")
    cfg = OmegaConf.create(result.stdout)
    assert cfg.scheduler._target_ == "halton.sampling.ConfidenceScheduler" and cfg.data.grid == [32, 32]


def test_no_experiment_means_the_digits():
    for entry in ENTRY_POINTS:
        cfg = compose_job(entry, [])
        assert cfg.name == "digits" and cfg.data.grid == [8, 8]
    assert compose_job("sample", []).checkpoint.endswith("runs/digits/checkpoints/last.ckpt")


def refusal(entry: str, *argv: str) -> str:
    """The one line an entry point refuses ``argv`` with, from its checks before the task (in this process)."""
    from halton.cli import preflight
    from halton.options import Invalid

    with pytest.raises(Invalid) as error:
        preflight(list(argv), entry)
    return f"error: {error.value}"


def test_evaluate_without_an_experiment_evaluates_the_digits_run(tmp_path):
    assert refusal("evaluate", f"paths.root_dir={tmp_path}") == (  # nothing trained yet: says so
        f"error: checkpoint not found: {tmp_path}/runs/digits/checkpoints/last.ckpt; train.py writes "
        "runs/<name>/checkpoints/last.ckpt, or pass checkpoint=PATH")
    assert not (tmp_path / "runs").exists()  # no runs/None; checked before anything was written


def test_the_sampling_options_are_one_group_shared_by_sample_evaluate_and_the_app():
    from halton.cli import composed_runs
    from halton.options import SamplingOptions

    shown = {entry: SamplingOptions.from_config(compose_job(entry, [])) for entry in ("sample", "evaluate", "app")}
    assert shown["sample"] == shown["app"] == SamplingOptions(steps=16, cfg_weight=1.0)
    assert shown["evaluate"] == SamplingOptions(steps=32, cfg_weight=1.0)  # evaluate.yaml's own steps
    cfg = compose_job("sample", ["steps=32", "cfg_weight=3", "cfg_interval=[0.1,0.3]", "schedule=poly"])
    assert SamplingOptions.from_config(cfg) == SamplingOptions(steps=32, cfg_weight=3, cfg_interval=[0.1, 0.3],
                                                               schedule="poly")
    sweep = composed_runs(["-m", "scheduler=halton,confidence", "steps=8,16"], "evaluate")
    assert [(c.scheduler._target_.split(".")[-1], c.steps) for c in sweep] == [
        ("HaltonScheduler", 8), ("HaltonScheduler", 16), ("ConfidenceScheduler", 8), ("ConfidenceScheduler", 16)]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_scheduler_name_and_options_in_every_entry_point(entry):
    cfg = compose_job(entry, ["scheduler=confidence", "scheduler.r_temp=3", "scheduler.guidance=constant",
                              "scheduler.mode=reference"])
    scheduler = instantiate(cfg.scheduler)
    assert scheduler.spec() == {"name": "confidence", "r_temp": 3, "guidance": "constant", "mode": "reference"}
    cfg = compose_job(entry, ["scheduler.randomize=false"])
    assert instantiate(cfg.scheduler).spec() == {"name": "halton", "randomize": False}
    if entry == "train":  # the sample grids drawn during training use the same scheduler
        cfg = compose_job(entry, ["scheduler=random"])
        with torch.device("meta"):
            module = instantiate(cfg.model)
        assert module.grid_scheduler.name == "random" and module.hparams.sample_grid["scheduler"] == {"name": "random"}


@pytest.mark.parametrize("entry,arg,message", [  # each entry point twice
    ("sample", "sampler=confidence", "error: unknown option sampler=confidence; use scheduler=confidence "
                                     "(scheduler=NAME picks one of confidence, halton, random, scheduler.OPTION=value "
                                     "sets its options)"),
    ("evaluate", "sampler.r_temp=3", "error: unknown option sampler.r_temp=3; use scheduler.r_temp=3 (scheduler=NAME"),
    ("train", "scheduler_options.randomize=false", "error: unknown option scheduler_options.randomize=false; use "
                                                   "scheduler.randomize=false (scheduler=NAME"),
    ("evaluate", "scheduler=maskgit", "error: unknown scheduler 'maskgit'; allowed: confidence, halton, random"),
    ("train", "schedular=halton", "error: unknown option schedular=halton: there is no key 'schedular'; did you mean "
                                  "scheduler? allowed: "),
    ("sample", "experiment=null", "error: experiment=null leaves the run without an experiment; allowed: c2i_xl, "
                                  "digits, "),
])
def test_other_spellings_are_one_line_errors(entry, arg, message, tmp_path):
    assert refusal(entry, arg, f"paths.root_dir={tmp_path}").startswith(message)
    assert not any(tmp_path.iterdir())  # checked before Hydra made a run folder


# ------------------------------------------------------------------ a training step with every config choice
def make_code_shards(root, data_cfg, samples: int = 16) -> None:
    """Random codes in the layout and with the tokenizer identity of a data config, as extraction would write."""
    rng = np.random.default_rng(0)
    spec = tokenizer_spec(instantiate(data_cfg.tokenizer))
    for split in ("train", "val"):
        folder = root / split
        folder.mkdir(parents=True)
        codes = rng.integers(0, data_cfg.codebook_size, (samples, *data_cfg.grid), dtype=np.uint16)
        chunk = Chunk(codes, rng.integers(0, data_cfg.num_classes, samples).astype(np.int32),
                      strings(f"{split}{i}" for i in range(samples)), codes[:, :, ::-1].copy(), None)
        record = write_shard(folder / "000000.tar", [chunk], source="random")
        Manifest(grid=list(data_cfg.grid), codebook_size=data_cfg.codebook_size, num_classes=data_cfg.num_classes,
                 chunk_size=samples, flipped=True, captions=False, tokenizer=spec,
                 image_size=data_cfg.image_size, source={"kind": "random"}, shards=[record]).save(folder)


ONE_STEP = ["experiment=digits", *TINY_NET, "trainer.max_steps=2", "trainer.val_check_interval=2",
            "trainer.check_val_every_n_epoch=null", "trainer.accelerator=cpu", "data.batch_size=4",
            "data.num_workers=0", "callbacks.model_checkpoint.every_n_train_steps=2", "model.sample_grid.per_class=1",
            "model.sample_grid.steps=2", "name=choice"]
# Every choice of logger, trainer (those that run on a CPU), callbacks and data appears in one of these runs.
# Two in the default run (a logger on the default trainer, no logger on DDP over shards); the rest in the slow set.
CHOICES = [
    ("csv", "default", "digits"),
    pytest.param("tensorboard", "cpu", "digits_shards", marks=pytest.mark.slow),
    pytest.param("wandb", "multinode", "imagenet_codes", marks=pytest.mark.slow),
    ("none", "ddp", "imagenet_codes_256_vq16"),
    pytest.param("csv", "cpu", "imagenet_codes_384_vq16", marks=pytest.mark.slow),
]


def test_the_choices_cover_every_config():
    runs = [getattr(c, "values", c) for c in CHOICES]  # (logger, trainer, data), marked slow or not
    assert {c[0] for c in runs} == set(choices("logger"))
    assert {c[1] for c in runs} == set(choices("trainer")) - {"gpu", "fsdp", "fsdp_checkpointing"}  # need GPUs
    # the text data configs: tests/test_text_training.py (digits_t2i trains; t2i_codes on fake shards)
    assert {c[2] for c in runs} == set(choices("data")) - {"digits_t2i", "t2i_codes"}
    assert choices("callbacks") == ["default"]  # every run uses it


@pytest.mark.parametrize("logger,trainer,data", CHOICES)
def test_a_training_step_with_every_config_choice(tmp_path, logger, trainer, data):
    args = [*ONE_STEP, f"logger={logger}", f"trainer={trainer}", f"data={data}", f"paths.root_dir={tmp_path}"]
    if data.startswith("imagenet"):  # random codes in shards; no tokenizer weights, so no sample grids
        make_code_shards(tmp_path / "codes", compose_job("train", args).data)
        args += [f"data.root={tmp_path / 'codes'}", "model.sample_grid=null"]
    if trainer in ("ddp", "multinode"):
        args += ["trainer.devices=1", "trainer.precision=32-true"]
    run("train.py", *args)
    run_dir = tmp_path / "runs" / "choice"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    written = {p.relative_to(run_dir).parts[0] for p in run_dir.rglob("*") if p.is_file()}
    expected = {"csv": "logs", "tensorboard": "tensorboard", "wandb": "wandb"}.get(logger)
    # .run.lock: the run folder's lock (halton.utils.run_lock), released but kept, empty
    assert (expected in written) if expected else written == {".hydra", "checkpoints", "train.log", ".run.lock"}
    if logger == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(next((run_dir / "tensorboard").rglob("events*")).parent))
        events.Reload()
        assert "samples" in events.Tags()["images"] and "val/loss" in events.Tags()["scalars"]


# ------------------------------------------------------------------ released checkpoints: published settings
PUBLISHED_CFG = {"hmaskgit_t_256": 1.5, "hmaskgit_s_256": 1.0, "hmaskgit_b_256": 0.7, "hmaskgit_s_384": 1.0,
                 "hmaskgit_b_384": 0.7, "hmaskgit_l_384": 0.5}  # the reference README's table


@pytest.mark.parametrize("experiment", sorted(PUBLISHED_CFG))
def test_released_checkpoints_evaluate_with_the_published_settings(experiment):
    evaluation = compose_job("evaluate", [f"experiment={experiment}"])
    assert OmegaConf.to_container(evaluation.scheduler, resolve=True) == {
        "_target_": "halton.sampling.HaltonScheduler", "randomize": False}  # the fixed order
    assert (evaluation.steps, evaluation.cfg_weight, evaluation.temp_min, evaluation.temp_max, evaluation.temp_pow,
            evaluation.temp_warmup, evaluation.top_k, evaluation.num_images, evaluation.reference.kind) == (
        32, PUBLISHED_CFG[experiment], 1.0, 1.0, 1.0, 1, None, 50000, "file")
    quick_start = compose_job("sample", [f"experiment={experiment}"])
    assert quick_start.scheduler.randomize is True
    assert (quick_start.steps, quick_start.cfg_weight, quick_start.temp_min, quick_start.temp_max,
            quick_start.temp_warmup) == (32, 2.0, 1.0, 1.2, 0)
    # a scheduler choice on the command line still wins, and another scheduler gets no Halton option
    assert compose_job("evaluate", [f"experiment={experiment}", "scheduler.randomize=true"]).scheduler.randomize
    assert "randomize" not in compose_job("evaluate", [f"experiment={experiment}", "scheduler=confidence"]).scheduler


def test_published_settings_show_in_cfg_job():
    result = run("evaluate.py", "experiment=hmaskgit_l_384", "--cfg", "job", "--resolve")
    shown = OmegaConf.create(result.stdout)
    assert (shown.scheduler.randomize, shown.temp_min, shown.temp_max, shown.temp_warmup, shown.cfg_weight,
            shown.steps, shown.num_images) == (False, 1.0, 1.0, 1, 0.5, 32, 50000)
