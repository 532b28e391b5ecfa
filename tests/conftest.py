import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """The released-format fixtures: ../shared/reference beside the repository (HALTON_REFERENCE overrides)."""
    path = Path(os.environ.get("HALTON_REFERENCE", ROOT.parent / "shared" / "reference"))
    if not (path / "official_c2i_tiny.pth").is_file():
        pytest.fail(f"reference fixtures not found in {path}; set HALTON_REFERENCE")
    return path


TINY = ["experiment=digits", "trainer.max_steps=4", "model.net.depth=1", "model.net.hidden_dim=32",
        "model.net.heads=2", "data.batch_size=16", "trainer.check_val_every_n_epoch=1",
        "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2",
        "model.sample_grid.per_class=2", "model.sample_grid.steps=4", "name=tiny"]
TINY_NET = ["model.net.depth=1", "model.net.hidden_dim=32", "model.net.heads=2"]


def run(script, *args, check=True, timeout=600):
    """Run an entry point as a user would; fail with its output when it fails and ``check``."""
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny digits model trained for 4 steps through train.py; returns the runs folder (run name "tiny")."""
    runs = tmp_path_factory.mktemp("runs")
    run("train.py", *TINY, f"paths.runs_dir={runs}")
    return runs


# A Lightning callback, written to a module file by tests that run train.py: it sends the process a real SIGTERM
# after a given step, as scancel or a preemption would.
SIGTERM_CALLBACK = '''
import os, signal
from lightning.pytorch.callbacks import Callback

class SigtermAfterStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
'''
