"""Exact resume: an interrupted and resumed run ends bitwise identical to an uninterrupted one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SIGTERM_CALLBACK

from halton.data import CodesDataset
from halton.data.reading.codes_dataset import pass_through
from halton.training import PreemptionCheckpoint, ResumableLoader

ROOT = Path(__file__).resolve().parent.parent
TINY = ["experiment=digits", "data=digits", "model.net.depth=1", "model.net.hidden_dim=32", "model.net.heads=2",
        "model.net.mlp_dim=64", "model.sample_grid=null", "model.warmup_steps=4", "trainer.max_steps=20",
        "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=1000", "callbacks.ema.decay=0.9"]


def train(runs: Path, name: str, *overrides: str, sigterm_after: int | None = None) -> subprocess.CompletedProcess:
    args = [*TINY, f"paths.runs_dir={runs}", f"name={name}", *overrides]
    env = dict(os.environ)
    if sigterm_after is not None:
        (runs / "sigterm_plugin.py").write_text(SIGTERM_CALLBACK)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(runs), env.get("PYTHONPATH")]))
        args += ["+callbacks.sigterm._target_=sigterm_plugin.SigtermAfterStep",
                 f"+callbacks.sigterm.step={sigterm_after}"]
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def last_checkpoint(runs: Path, name: str) -> dict:
    return torch.load(runs / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Bitwise equality of nested dicts / lists / tensors / numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(straight: dict, resumed: dict) -> None:
    assert straight["global_step"] == resumed["global_step"] == 20
    for key in ("current_model_state", "state_dict", "averaging_state", "optimizer_states", "lr_schedulers",
                "rng_states"):
        assert_identical(straight[key], resumed[key], key)


def interrupted_run(runs: Path, name: str, stops: list[int], *overrides: str) -> dict:
    """Train to 20 steps, stopped by a SIGTERM after each step in ``stops`` and resumed each time."""
    for stop in stops:
        result = train(runs, name, *overrides, sigterm_after=stop)
        assert result.returncode == 143, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"stopped at step {stop} (SIGTERM)" in result.stdout
        assert last_checkpoint(runs, name)["global_step"] == stop
    result = train(runs, name, *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming from" in result.stdout and "trained to step 20" in result.stdout
    return last_checkpoint(runs, name)


def test_ten_steps_sigterm_and_ten_more_equal_twenty_straight(tmp_path):
    # batch 8: 202 batches an epoch, so the interruption is mid-epoch
    straight = train(tmp_path, "straight", "data.batch_size=8")
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed = interrupted_run(tmp_path, "resumed", [10], "data.batch_size=8")
    assert_same_training_state(last_checkpoint(tmp_path, "straight"), resumed)


@pytest.mark.slow  # about 20-30 s; the default run stays under 10 minutes on 2 cores
def test_resume_across_an_epoch_end_and_a_validation(tmp_path):
    # 180 training digits in batches of 16: 11 batches an epoch, a validation (with a sample grid) after each;
    # stopped mid-epoch, then at the end of the first epoch (before its validation), then the last 9 steps cross
    # into the second epoch.
    overrides = ["data.batch_size=16", "data.val_fraction=0.9", "trainer.check_val_every_n_epoch=1",
                 "+trainer.limit_val_batches=2", "model.sample_grid={per_class: 1, steps: 2, scheduler: halton}"]
    straight = train(tmp_path, "straight", *overrides)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert (tmp_path / "straight/logs/version_0/samples/step_0000011.png").is_file()  # it did validate there
    resumed = interrupted_run(tmp_path, "resumed", [5, 11], *overrides)
    assert_same_training_state(last_checkpoint(tmp_path, "straight"), resumed)


# ---------------------------------------------------------------------------- the loader alone
def lightning_like_consumer(loader, steps: int) -> tuple[list[torch.Tensor], dict]:
    """Trains on ``steps`` batches the way Lightning reads a loader with a length (on demand, and never past the
    epoch's length) and takes the loader state at that point, as a checkpoint would."""
    iterator = iter(loader)
    trained = [next(iterator)["labels"] for _ in range(steps)]
    return trained, loader.state_dict()


def epoch_labels(loader) -> list[torch.Tensor]:
    return [batch["labels"] for batch in loader]


def numbered_dataset(size: int = 50) -> CodesDataset:
    return CodesDataset(torch.zeros(size, 2, 2, dtype=torch.long), torch.arange(size))


@pytest.mark.parametrize("steps", [0, 3, 11, 12])
def test_loader_resumes_at_the_next_untrained_batch(steps):
    reference = ResumableLoader(numbered_dataset(), batch_size=4, seed=7, collate_fn=pass_through)
    assert len(reference) == 12  # 50 // 4, the incomplete batch dropped
    epochs = [epoch_labels(reference)]
    reference.sampler.set_epoch(1)
    epochs.append(epoch_labels(reference))
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))  # a new order every epoch

    interrupted = ResumableLoader(numbered_dataset(), batch_size=4, seed=7, collate_fn=pass_through)
    trained, state = lightning_like_consumer(interrupted, steps)
    resumed = ResumableLoader(numbered_dataset(), batch_size=4, seed=123, collate_fn=pass_through)
    resumed.load_state_dict(state)  # the seed comes from the state
    rest = epoch_labels(resumed)
    if steps == 12:  # saved at the end of the epoch: the next one starts
        assert resumed.sampler.epoch == 1 and torch.equal(torch.cat(rest), torch.cat(epochs[1]))
    else:
        assert torch.equal(torch.cat(trained + rest), torch.cat(epochs[0]))


def test_loader_splits_each_epoch_over_ranks_without_overlap():
    sampler = ResumableLoader(numbered_dataset(50), batch_size=4, seed=0).sampler
    parts = [sampler.batches(epoch=3, rank=rank, world_size=3) for rank in range(3)]
    assert all(part.shape == (4, 4) for part in parts)  # 50 // 3 = 16 samples a rank: 4 batches of 4
    seen = torch.cat([part.flatten() for part in parts])
    assert len(set(seen.tolist())) == len(seen)


def test_loader_and_preemption_refuse_bad_values():
    loader = ResumableLoader(numbered_dataset(), batch_size=4)
    with pytest.raises(ValueError, match=r"lacks \['samples'\]"):
        loader.load_state_dict({"seed": 0, "epoch": 0})
    with pytest.raises(ValueError, match="batch_size=0 is out of range; allowed: >= 1"):
        ResumableLoader(numbered_dataset(), batch_size=0)
    with pytest.raises(ValueError, match="unknown requeue_signal 'SIGKILL'; allowed: SIGUSR1, SIGUSR2"):
        PreemptionCheckpoint("last.ckpt", requeue_signal="SIGKILL")
