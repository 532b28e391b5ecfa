"""kill -9 during a checkpoint save leaves the previous checkpoint loadable (AtomicCheckpointIO)."""

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import torch

from halton.training import AtomicCheckpointIO

FORK = multiprocessing.get_context("fork")
SAVE_MB = 256  # big enough that a save takes a good fraction of a second


def save_forever(path: str, atomic: bool, begun, done) -> None:
    """Overwrites ``path`` with checkpoints of increasing step, each payload filled with its step number."""
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork(): parallel ops would hang
    path = Path(path)
    step = torch.load(path, weights_only=True)["step"] if path.exists() else 0
    io = AtomicCheckpointIO()
    while True:
        step += 1
        checkpoint = {"step": step, "weights": torch.full((SAVE_MB // 4, 1024, 1024), float(step))}
        begun.value = step
        if atomic:
            io.save_checkpoint(checkpoint, path)
        else:
            torch.save(checkpoint, path)
        done.value = step


def kill_mid_save(path: Path, atomic: bool) -> tuple[int, int]:
    """Starts a writer, lets it finish one save, SIGKILLs it somewhere inside the next one; returns the steps of
    the last save begun and the last save finished."""
    begun, done = FORK.RawValue("i", 0), FORK.RawValue("i", 0)  # lock-free: the writer dies without releasing
    writer = FORK.Process(target=save_forever, args=(str(path), atomic, begun, done), daemon=True)
    writer.start()
    deadline = time.monotonic() + 60
    while not (done.value > 0 and begun.value > done.value) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert begun.value > done.value > 0, "the writer never got to a second save"
    time.sleep(random.uniform(0.0, 0.05 if not atomic else 0.2))
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    assert writer.exitcode == -signal.SIGKILL
    return begun.value, done.value


def load_consistent(path: Path) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    step = state["step"]
    assert torch.all(state["weights"] == step), "payload does not match its step"
    return step


def temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    random.seed(0)
    path = tmp_path / "last.ckpt"
    kills_mid_write = 0
    for _ in range(12):
        begun, done = kill_mid_save(path, atomic=True)
        step = load_consistent(path)  # always loadable, with weights_only=True
        assert step in (done, begun)  # the last finished save (or the killed one, if it got as far as the rename)
        if temporaries(path):  # the kill caught a save with its temporary file half written
            kills_mid_write += 1
        if kills_mid_write >= 3:
            break
    assert kills_mid_write >= 3, f"only {kills_mid_write} kills landed mid-write; the test proves nothing"
    # The next save removes what the killed writers left behind.
    AtomicCheckpointIO().save_checkpoint({"step": 0, "weights": torch.zeros(1)}, path)
    assert temporaries(path) == [] and load_consistent(path) == 0


def test_the_same_kill_corrupts_a_plain_torch_save(tmp_path):
    # The control: the kills above do land mid-write; without the temporary file and rename the file is lost.
    random.seed(0)
    path = tmp_path / "last.ckpt"
    for _ in range(12):
        kill_mid_save(path, atomic=False)
        try:
            load_consistent(path)
        except Exception:  # truncated zip archive
            return
        path.unlink()
    raise AssertionError("12 kills during plain torch.save calls never left a broken file")
