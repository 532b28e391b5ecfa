"""Two-process DDP training on CPU (gloo), through train.py as a user would launch it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two processes; test_shards' DDP test keeps two ranks in the default run
def test_two_process_ddp_training_on_cpu(tmp_path):
    args = ["experiment=digits", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", "trainer.max_steps=4", "model.net.depth=1", "model.net.hidden_dim=32",
            "model.net.heads=2", "data.batch_size=8", "callbacks.model_checkpoint.every_n_train_steps=2",
            "model.sample_grid=null", f"paths.runs_dir={tmp_path}", "name=ddp"]
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    last = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    # Only rank 0 writes logs.
    assert [p.name for p in (tmp_path / "ddp" / "logs").iterdir()] == ["version_0"]
