"""A run that diverges stops at the step where it did, with one line, before writing a checkpoint of non-finite
weights; a checkpoint whose weights are not finite is refused when it is loaded."""

import logging

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from halton.data import DigitsDataModule
from halton.models import MaskTransformer
from halton.models.loading import load_model, load_pretrained
from halton.sampling import build_scheduler, sample
from halton.training import AtomicCheckpointIO, MaskGITModule

from conftest import ROOT, TINY_NET, run, run_in_process

NET = {"_target_": "halton.models.MaskTransformer", "codebook_size": 17, "input_size": 8, "hidden_dim": 32,
       "depth": 1, "heads": 2, "num_classes": 10}


def trainer_with_the_run_callbacks(tmp_path, max_steps, every_n_train_steps, log_every_n_steps, first=()):
    """A CPU trainer with train.py's callbacks (conf/callbacks/default.yaml, without the progress bar, model summary,
    learning-rate monitor and throughput, which need a logger or a terminal) and its checkpoint plugin; ``first``:
    callbacks that run before them."""
    config = OmegaConf.create({"paths": {"runs_dir": str(tmp_path)}, "name": "run",
                               "callbacks": OmegaConf.load(ROOT / "conf/callbacks/default.yaml")})
    config.callbacks.model_checkpoint.every_n_train_steps = every_n_train_steps
    config.callbacks.ema.decay = 0.9
    callbacks = [instantiate(c) for name, c in config.callbacks.items()
                 if name not in ("progress_bar", "model_summary", "lr_monitor", "throughput")]
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, log_every_n_steps=log_every_n_steps,
                      gradient_clip_val=1.0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, callbacks=[*first, *callbacks],
                      plugins=[AtomicCheckpointIO()])


def tiny_module(lr):
    return MaskGITModule(instantiate(NET), lr=lr, warmup_steps=0, total_steps=10, weight_decay=0.0)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


class WeightsAfterEachStep(pl.Callback):
    """The test's own record: whether the live weights are finite after each optimizer step (a host read per step,
    which the run's check avoids)."""

    def __init__(self):
        self.finite = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.finite[trainer.global_step] = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())


def test_a_diverging_run_stops_at_the_step_it_diverged_and_keeps_its_last_good_checkpoint(tmp_path, caplog):
    """lr 1e6: the weights stop being finite after a few steps. Checkpoints every 2 steps, the flag read every 3
    (logging) and at each save: the run stops at the first of those after the divergence, naming the step where it
    diverged; the checkpoints from before it are finite and sample."""
    weights = WeightsAfterEachStep()
    trainer = trainer_with_the_run_callbacks(tmp_path, 12, every_n_train_steps=2, log_every_n_steps=3,
                                             first=[weights])
    pl.seed_everything(0)
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(tiny_module(lr=1e6), datamodule=DigitsDataModule(batch_size=16))
    diverged = min(step for step, finite in weights.finite.items() if not finite)
    assert 3 <= diverged < 12  # the premise: a good checkpoint (step 2) before it
    stop = min(step for step in range(diverged, 13) if step % 2 == 0 or step % 3 == 0)
    assert stopped.value.code == 3 and trainer.global_step == stop
    assert error_lines(caplog) == [f"error: {stopped.value.message}"] and "\n" not in stopped.value.message
    assert stopped.value.message.startswith(f"training diverged at step {diverged}: the loss is ")
    last_good = max(step for step in range(2, diverged, 2))
    assert f"stopped at step {stop} without saving it, the last checkpoint saved is of step {last_good} in " \
           in stopped.value.message

    folder = tmp_path / "run" / "checkpoints"
    saved = {f"step_{step:07d}.ckpt" for step in range(2, diverged, 2)} | {"last.ckpt"}
    assert {p.name for p in folder.iterdir()} == saved  # no temporary left either
    for name in saved:
        state = torch.load(folder / name, map_location="cpu", weights_only=True)
        assert all_finite(state["state_dict"]) and all_finite(state["current_model_state"]), name  # EMA, live
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == last_good
    net = load_model(folder / "last.ckpt", OmegaConf.create(NET))
    codes = sample(net, build_scheduler("halton"), torch.arange(10), steps=4, seed=0).codes
    assert codes.shape == (10, 8, 8) and int(codes.min()) >= 0 and int(codes.max()) < 17


class PoisonAtStep(pl.Callback):
    """Turns one weight of the live model or of the EMA to NaN after a step whose loss and gradients were finite:
    only the check of the weights at the save can see it."""

    def __init__(self, step, which):
        self.step, self.which = step, which

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        ema = next(c for c in trainer.callbacks if hasattr(c, "_average_model"))
        model = pl_module if self.which == "live" else ema._average_model
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")


@pytest.mark.parametrize("which", ["live", "EMA"])
def test_a_save_of_non_finite_weights_is_refused(tmp_path, caplog, which):
    # Before the EMA's update (which then averages the live NaN in) and the save of step 4.
    trainer = trainer_with_the_run_callbacks(tmp_path, 6, every_n_train_steps=2, log_every_n_steps=50,
                                             first=[PoisonAtStep(4, which)])
    pl.seed_everything(0)
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(tiny_module(lr=1e-3), datamodule=DigitsDataModule(batch_size=16))
    assert stopped.value.code == 3 and trainer.global_step == 4
    assert error_lines(caplog) == [f"error: {stopped.value.message}"]
    poisoned = 2 if which == "live" else 1
    assert stopped.value.message.startswith(f"the weights stopped being finite by step 4 ({poisoned} of ")
    folder = tmp_path / "run" / "checkpoints"
    assert {p.name for p in folder.iterdir()} == {"step_0000002.ckpt", "last.ckpt"}
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 and all_finite(last["state_dict"]) and all_finite(last["current_model_state"])


def nan_weights(net: MaskTransformer) -> tuple[int, int]:
    """Turn the class embedding to NaN: (NaN weights, all weights)."""
    with torch.no_grad():
        net.cls_emb.weight.fill_(float("nan"))
    return net.cls_emb.weight.numel(), sum(p.numel() for p in net.parameters())


def test_loading_a_checkpoint_with_non_finite_weights_is_refused_in_one_line(tmp_path):
    net = instantiate(NET)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    assert all_finite(load_model(path, OmegaConf.create(NET)).state_dict())  # finite: loads
    bad, total = nan_weights(net)
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    expected = (f"checkpoint {path} holds non-finite weights: {bad:,} of its {total:,} weights ({bad / total:.2%}) "
                "are NaN or infinite, written by a training run that diverged; use a checkpoint from before the "
                "divergence")
    with pytest.raises(ValueError) as refused:
        load_model(path, OmegaConf.create(NET))
    assert str(refused.value) == expected
    folder = tmp_path / "exported"
    net.save_pretrained(folder)  # a model folder in the Hugging Face format (export's output)
    with pytest.raises(ValueError, match=rf"^checkpoint {folder} holds non-finite weights: {bad:,} of its"):
        load_pretrained(str(folder))
    with pytest.raises(ValueError, match=rf"^checkpoint {folder} holds non-finite weights: {bad:,} of its"):
        load_model(folder)


def test_sample_py_refuses_a_checkpoint_with_non_finite_weights(tmp_path):
    """The entry points load through halton.models.loading: one line, exit code 2, nothing written."""
    from halton.cli import composed_runs

    net = instantiate(composed_runs(["experiment=digits", *TINY_NET], "sample")[0].model.net)
    bad, total = nan_weights(net)
    path = tmp_path / "diverged.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    result = run_in_process("sample.py", "experiment=digits", *TINY_NET, f"checkpoint={path}",
                            f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: checkpoint {path} holds non-finite weights: {bad:,} of its {total:,} "
                                     f"weights ({bad / total:.2%}) are NaN or infinite, written by a training run "
                                     "that diverged; use a checkpoint from before the divergence")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # train.py in a fresh process: about a minute on 2 cores
def test_train_py_stops_a_diverging_run_with_one_line_and_exit_code_3(tmp_path):
    result = run("train.py", "experiment=digits", *TINY_NET, "model.lr=1e6", "model.warmup_steps=0",
                 "data.batch_size=16", "trainer.max_steps=20", "trainer.log_every_n_steps=50",
                 "callbacks.model_checkpoint.every_n_train_steps=2", f"paths.runs_dir={tmp_path}", "name=div",
                 check=False)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert result.returncode == 3 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith("error: training diverged at step ") or \
        errors[0].startswith("error: the weights stopped being finite by step ")
    for path in (tmp_path / "div" / "checkpoints").iterdir():
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert all_finite(state["state_dict"]) and all_finite(state["current_model_state"]), path.name
