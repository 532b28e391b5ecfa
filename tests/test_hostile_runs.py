"""Runs that meet another run, a Ctrl-C, a batch larger than the data set, or what a killed run left (issue 25:
concurrent runs, quiet failures): one run per run folder, a dead run's lock taken over, Ctrl-C saves a checkpoint,
a batch that can never be drawn refused up front, a killed shard write's temporary removed by the rerun."""

from __future__ import annotations

import pytest
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from halton.data.writing.extraction import extract_locally
from halton.data.writing.sources import DigitsSource
from halton.tokenizers import PixelTokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = ["experiment=digits", "model.net.depth=1", "model.net.hidden_dim=32", "model.net.heads=2",
        "model.net.mlp_dim=64", "model.sample_grid=null", "model.warmup_steps=2", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1000", "data.batch_size=16"]
# A callback that makes a run a long one: after each step it records the step in a file, then pauses.
SLOW_CALLBACK = '''
import time
from pathlib import Path
from lightning.pytorch.callbacks import Callback

class SlowSteps(Callback):
    def __init__(self, marker, pause):
        self.marker, self.pause = Path(marker), pause

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.marker.write_text(str(trainer.global_step))
        time.sleep(self.pause)
'''


def train(runs: Path, name: str, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *TINY, f"paths.runs_dir={runs}", f"name={name}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_long_run(runs: Path, name: str) -> subprocess.Popen:
    """A run still going: returns once it has trained a step (its output in runs/<name>.out and .err)."""
    (runs / "slow_steps.py").write_text(SLOW_CALLBACK)
    marker = runs / f"{name}.step"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(runs), os.environ.get("PYTHONPATH")]))}
    args = [*TINY, f"paths.runs_dir={runs}", f"name={name}", "trainer.max_steps=100000",
            "+callbacks.slow._target_=slow_steps.SlowSteps", f"+callbacks.slow.marker={marker}",
            "+callbacks.slow.pause=0.2"]
    with open(runs / f"{name}.out", "w") as out, open(runs / f"{name}.err", "w") as err:
        process = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=out, stderr=err)
    deadline = time.monotonic() + 300
    while not marker.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the long run did not start training: {(runs / f'{name}.err').read_text()[-3000:]}")
        time.sleep(0.2)
    return process


def stop(process: subprocess.Popen, signum: int) -> int:
    process.send_signal(signum)
    try:
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()


def global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


def test_a_second_run_in_a_run_folder_in_use_is_refused_and_writes_nothing_there(tmp_path):
    first = start_long_run(tmp_path, "shared")
    run_dir = tmp_path / "shared"
    kept = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (run_dir / ".hydra").iterdir()}
    second = train(tmp_path, "shared", "trainer.max_steps=3")  # a resubmitted job, while the first still runs
    status = stop(first, signal.SIGTERM)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"PID {first.pid} on host {socket.gethostname()}" in lines[0], second.stderr
    assert f"run folder {run_dir} is in use" in lines[0] and "another name=NAME" in lines[0]
    # the first run's files: its config, log, metrics and checkpoint are its own
    assert status == 143, (tmp_path / "shared.err").read_text()[-3000:]
    assert kept == {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (run_dir / ".hydra").iterdir()}
    log = (run_dir / "train.log").read_text()
    assert "error" not in log and "in use" not in log and log.count("stopped at step") == 1
    (metrics,) = run_dir.glob("logs/*/metrics.csv")
    steps = [row["step"] for row in csv.DictReader(metrics.open()) if row.get("train/loss")]
    assert steps and len(steps) == len(set(steps))  # no row twice
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert f"saved {run_dir / 'checkpoints' / 'last.ckpt'} at step {global_step(run_dir / 'checkpoints/last.ckpt')}" \
        in (tmp_path / "shared.out").read_text()
    assert not (run_dir / ".run.lock.owner").exists()  # released on its way out


@pytest.mark.slow  # a killed train.py and a second one; the lock's refusal stays in the default run
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    first = start_long_run(tmp_path, "killed")
    assert stop(first, signal.SIGKILL) == -signal.SIGKILL
    checkpoints = tmp_path / "killed" / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    (checkpoints / ".last.ckpt.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # as if killed during a save
    rerun = train(tmp_path, "killed", "trainer.max_steps=2")
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    output = rerun.stdout + rerun.stderr
    assert (f"took over run folder {tmp_path / 'killed'} from PID {first.pid} on host {socket.gethostname()}"
            in output and "no longer running" in output), output[-3000:]
    assert not list(checkpoints.glob(".*.tmp")) and global_step(checkpoints / "last.ckpt") == 2
    assert not (tmp_path / "killed" / ".run.lock.owner").exists()


def test_ctrl_c_during_training_saves_a_checkpoint_of_the_step(tmp_path):
    first = start_long_run(tmp_path, "interrupted")
    status = stop(first, signal.SIGINT)
    out, err = (tmp_path / "interrupted.out").read_text(), (tmp_path / "interrupted.err").read_text()
    assert status == 130, out[-2000:] + err[-3000:]
    last = tmp_path / "interrupted" / "checkpoints" / "last.ckpt"
    step = global_step(last)
    assert step >= 1 and f"SIGINT: saved {last} at step {step}" in out and f"stopped at step {step} (SIGINT)" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (tmp_path / "interrupted" / ".run.lock.owner").exists()  # the lock released


def test_a_batch_larger_than_the_data_set_is_refused_before_training(tmp_path):
    result = train(tmp_path, "big", "data.batch_size=100000", "trainer.max_steps=2")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert ("data.batch_size=100000 is larger than the training set (1617 samples in " in lines[0]
            and "digits_shards/train); allowed: data.batch_size <= 1617" in lines[0]), lines[0]
    assert not (tmp_path / "big").exists()  # nothing left behind


def test_an_extraction_rerun_removes_what_a_killed_shard_write_left(tmp_path):
    source = DigitsSource("val", shard_size=60)  # 180 digits: 3 shards
    options = dict(grid=[8, 8], chunk_size=30, batch_size=60, progress=False)
    clean = extract_locally(source, PixelTokenizer(17), tmp_path, **options)
    # killed while writing shard 1 (its record not written), and while writing the manifest
    (tmp_path / "000001.tar").unlink()
    (tmp_path / "000001.json").unlink()
    (tmp_path / ".000001.tar.k1ll3d.tmp").write_bytes(b"")
    (tmp_path / ".manifest.json.k1ll3d.tmp").write_bytes(b"")
    (tmp_path / "notes.tmp").write_text("not ours")
    rerun = extract_locally(source, PixelTokenizer(17), tmp_path, **options)
    assert [s.sha256 for s in rerun.shards] == [s.sha256 for s in clean.shards]
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "notes.tmp").read_text() == "not ours"
