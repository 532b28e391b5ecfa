import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"  # released-format checkpoints and key lists (small; see fixtures/README.md)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


TINY = ["experiment=digits", "trainer.max_steps=4", "model.net.depth=1", "model.net.hidden_dim=32",
        "model.net.heads=2", "data.batch_size=16", "trainer.check_val_every_n_epoch=1",
        "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2",
        "model.sample_grid.per_class=2", "model.sample_grid.steps=4", "name=tiny"]
TINY_NET = ["model.net.depth=1", "model.net.hidden_dim=32", "model.net.heads=2"]
CONSOLE: dict[str, str] = {}  # what session fixtures' runs printed, by fixture


def run(script, *args, check=True, timeout=600, env=None):
    """Run an entry point as a user would (``train.py``, or ``-m halton.data.extract``), with ``env`` added to the
    environment; fail with its output when it fails and ``check``."""
    command = ["-m", script[3:]] if script.startswith("-m ") else [str(ROOT / script)]
    result = subprocess.run([sys.executable, *command, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run_in_process(script, *args, env=None) -> subprocess.CompletedProcess:
    """What ``run`` gives (exit code, stdout, stderr) for a command line the entry point refuses before its task
    starts, without starting Python, torch and Lightning again: the entry point's ``__main__`` code runs in this
    process, so the same composition, validation and input checks answer. The command line itself (a fresh
    process, nothing heavy imported, exit code 2) keeps its own subprocess tests."""
    import contextlib
    import io
    import runpy
    import warnings

    stdout, stderr, root = io.StringIO(), io.StringIO(), logging.getLogger()
    saved = dict(argv=sys.argv, environ=dict(os.environ), cwd=os.getcwd(), handlers=root.handlers[:])
    code = 0
    try:
        os.environ.update(env or {})
        os.chdir(ROOT)
        sys.argv = [script, *args]
        root.handlers = []  # as in a fresh process: halton.cli.fail prints its line to stderr
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            # runpy's notice that the module was imported before (by the tests): a fresh process has no such line
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
            if script.startswith("-m "):
                runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        sys.argv = saved["argv"]
        os.environ.clear()
        os.environ.update(saved["environ"])
        os.chdir(saved["cwd"])
        root.handlers = saved["handlers"]
    return subprocess.CompletedProcess([script, *args], code, stdout.getvalue(), stderr.getvalue())


def log_messages(path) -> list[str]:
    """The messages of a run's log file, without the time, logger and level of each record."""
    prefix = re.compile(r"^\[[^]]*\]\[[^]]*\]\[[A-Z]+\] ")
    return [prefix.sub("", line).rstrip() for line in path.read_text().splitlines()]


PROGRESS_BAR = re.compile(r"[\d?]+/[\d?]+ \[[^]]*(it/s|s/it)")  # tqdm: "training: 40%|####| 4/10 [00:01<00:02, 3.1it/s"


def assert_logged(stdout: str, log_file) -> None:
    """Every line the run printed (but progress bars) is in its log file. (Python's text mode turns the progress
    bars' carriage returns into new lines.)"""
    messages = set(log_messages(log_file))
    printed = [line.rstrip() for line in stdout.splitlines()
               if line.strip() and not PROGRESS_BAR.search(line) and "\x1b[" not in line]  # nor their cursor moves
    assert printed and [line for line in printed if line not in messages] == []


@pytest.fixture(scope="session")
def digits_features(tmp_path_factory):
    """The classifier of the digits_* metrics, trained once per test run in an empty folder (as the first
    evaluation of a data folder trains it): ``(folder, extractor)``. Give a data folder its cache with
    ``digits_cache``, and its evaluations load the classifier instead of training it again."""
    from halton.evaluation.features import DigitsFeatures

    folder = tmp_path_factory.mktemp("digits_features")
    return folder, DigitsFeatures(folder)


def digits_cache(digits_features, data_dir: Path) -> None:
    """Put the trained digits classifier where evaluate.py looks for it (``paths.data_dir``/cache)."""
    shutil.copytree(digits_features[0], data_dir / "cache", dirs_exist_ok=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_features) -> Path:
    """A tiny digits model trained for 4 steps through train.py; returns the runs folder (run name "tiny"), whose
    data folder (``paths.data_dir={runs}/data`` in the evaluation tests) holds the trained digits classifier."""
    runs = tmp_path_factory.mktemp("runs")
    result = run("train.py", *TINY, f"paths.runs_dir={runs}")
    CONSOLE["tiny_run"] = result.stdout + result.stderr  # what it printed, redirected (tests/test_help_and_messages.py)
    digits_cache(digits_features, runs / "data")
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
