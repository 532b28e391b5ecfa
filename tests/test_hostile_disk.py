"""A full disk (issue 25, finding 6): a checkpoint save, an extraction or any other write that runs out of space
stops with one line naming the file, the cause and what to do, exit code 2; nothing half-written is left, what
was written before is intact, and a rerun carries on (training resumes from the last checkpoint, extraction skips
the finished shards).

The default tests fill a simulated disk (a write beyond its free bytes fails with ENOSPC, as on a full file system)
or set the kernel's file size limit (RLIMIT_FSIZE: a write beyond it fails with EFBIG); the slow ones run the
commands in a fresh process under that limit."""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from PIL import Image

from halton.data import DigitsDataModule
from halton.data.format import chunks
from halton.data.writing.extraction import extract_locally
from halton.data.writing.sources import DigitsSource
from halton.evaluation.results import ResultsFile
from halton.training import checkpoint_io
from halton.utils.checkpoint import atomic_torch_save, read_checkpoint
from halton.tokenizers import PixelTokenizer

from conftest import ROOT, TINY, run_in_process
from test_divergence import all_finite, error_lines, tiny_module, trainer_with_the_run_callbacks

KEPT = "and run again (nothing half-written was kept; files written before are intact)"
ENOSPC = f"No space left on device (ENOSPC); free space on that file system, {KEPT}"
ENOSPC_ELSEWHERE = ("No space left on device (ENOSPC); free space on that file system, or write elsewhere with {}, "
                    + KEPT)
EFBIG = ("File too large (EFBIG); raise the file size limit (ulimit -f) or use a file system that takes larger files"
         ", or write elsewhere with {}, " + KEPT)


# ------------------------------------------------------------------------------------------------- a full disk
class FullDisk:
    """A file system with ``free`` bytes left (None: unlimited), for the files a module opens for writing with
    ``open``: a write beyond them writes what fits and fails with ENOSPC, as a full disk does."""

    def __init__(self, monkeypatch, *modules, free: int | None = None):
        self.free = free
        for module in modules:
            monkeypatch.setattr(module, "open", self.open, raising=False)

    def open(self, path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        return _OnDisk(file, self) if any(c in mode for c in "wax+") else file


class _OnDisk:
    def __init__(self, file, disk: FullDisk):
        self._file, self._disk = file, disk

    def write(self, data) -> int:
        size = memoryview(data).nbytes if not isinstance(data, str) else len(data.encode())
        free = self._disk.free
        if free is not None and size > free:
            self._file.write(memoryview(data).cast("B")[:free] if not isinstance(data, str) else data[:free])
            self._disk.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if free is not None:
            self._disk.free -= size
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@contextlib.contextmanager
def file_size_limit(size: int):
    """The kernel's limit on the size of the files this process writes (RLIMIT_FSIZE), SIGXFSZ ignored: a write
    beyond ``size`` bytes fails with EFBIG, however the file was opened (C, Rust or Python writers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ checkpoints
class DiskFillsAtStep(pl.Callback):
    """Leaves ``free`` bytes on the disk at a step, before that step's checkpoint is saved."""

    def __init__(self, disk: FullDisk, step: int, free: int):
        self.disk, self.step, self.free = disk, step, free

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self.disk.free = self.free


def test_a_full_disk_during_a_checkpoint_save_names_the_file_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    """train.py's checkpoint plugin and callbacks; the disk fills at step 4, half a checkpoint left: the save of
    step 4 fails with the file named and the cause (where torch itself says only ``unexpected pos``); the step-2
    checkpoints are intact and no temporary is left."""
    disk = FullDisk(monkeypatch, checkpoint_io)
    folder = tmp_path / "run" / "checkpoints"
    trainer = trainer_with_the_run_callbacks(tmp_path, 6, every_n_train_steps=2, log_every_n_steps=50,
                                             first=[DiskFillsAtStep(disk, 4, free=20_000)])
    pl.seed_everything(0)
    with pytest.raises(OSError) as failed:
        trainer.fit(tiny_module(lr=1e-3), datamodule=DigitsDataModule(batch_size=16))
    assert str(failed.value) == f"cannot write {folder / 'step_0000004.ckpt'}: {ENOSPC}"
    assert failed.value.errno == errno.ENOSPC and trainer.global_step == 4
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_0000002.ckpt"]  # no temporary
    for name in ("last.ckpt", "step_0000002.ckpt"):
        state = read_checkpoint(folder / name)
        assert state["global_step"] == 2 and all_finite(state["state_dict"]), name


def test_train_py_stops_on_a_full_disk_with_one_line_and_exit_code_2(tmp_path, monkeypatch, caplog):
    """The entry point's handler (halton.cli.entry_point): a save that failed as torch reports it (``unexpected
    pos``, the OSError only chained) becomes one line naming the file and the option that writes elsewhere,
    exit code 2; the run's earlier files stay."""
    from halton.cli import entry_point

    runs = tmp_path / "runs"
    earlier = atomic_torch_save({"step": 2}, runs / "tiny" / "checkpoints" / "step_0000002.ckpt")
    disk = FullDisk(monkeypatch, checkpoint_io, free=100)

    @entry_point
    def task(cfg):  # train.py's checkpoint plugin, as Lightning calls it
        checkpoint_io.AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(10_000)},
                                                           runs / "tiny" / "checkpoints" / "last.ckpt")

    with pytest.raises(SystemExit) as stopped:
        task(OmegaConf.create({"paths": {"root_dir": str(tmp_path), "runs_dir": str(runs)}, "name": "tiny"}))
    path = runs / "tiny" / "checkpoints" / "last.ckpt"
    assert stopped.value.code == 2 and disk.free == 0
    assert error_lines(caplog) == [f"error: cannot write {path}: {ENOSPC_ELSEWHERE.format('paths.runs_dir=DIR')}"]
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["step_0000002.ckpt"]
    assert read_checkpoint(earlier) == {"step": 2}


def test_train_py_with_no_room_for_its_run_lock_stops_with_one_line(tmp_path):
    """The first write of a run: its lock's owner record (before Hydra makes the run folder's files)."""
    with file_size_limit(40):  # the record is about 80 bytes
        result = run_in_process("train.py", "experiment=digits", f"paths.runs_dir={tmp_path}", "name=tiny")
    owner = tmp_path / "tiny" / ".run.lock.owner"
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: cannot write {owner}: {EFBIG.format('paths.runs_dir=DIR')}"]
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [".run.lock"]  # no temporary, no owner record
    assert FileLock(tmp_path / "tiny" / ".run.lock").acquire(timeout=0)  # released


def test_the_run_log_file_on_a_full_disk_warns_once_instead_of_a_traceback_per_record(tmp_path, monkeypatch,
                                                                                       capsys):
    from halton.utils.logs import RunLogFile

    handler = RunLogFile(tmp_path / "train.log")
    handler.stream = _OnDisk(handler.stream, FullDisk(monkeypatch, free=0))
    logger = logging.getLogger("halton.test_full_disk")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(handler)
    try:
        for step in range(3):
            logger.warning("step %d", step)
        assert capsys.readouterr().err == (f"warning: the log file {tmp_path / 'train.log'} is not being written: "
                                           "No space left on device (ENOSPC); free space on that file system\n")
        logger.warning("a record logging cannot format: %d", "not a number")  # other errors: as logging shows them
        assert "--- Logging error ---" in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)
        handler.close()


# ------------------------------------------------------------------------------------------------- extraction
def test_a_full_disk_during_extraction_names_the_shard_and_the_rerun_resumes(tmp_path, monkeypatch):
    source = DigitsSource("val", shard_size=60)  # 180 digits: 3 shards
    options = dict(grid=[8, 8], chunk_size=30, batch_size=60, progress=False)
    clean = extract_locally(source, PixelTokenizer(17), tmp_path / "clean", **options)
    out = tmp_path / "out"
    disk = FullDisk(monkeypatch, chunks, free=(tmp_path / "clean" / "000000.tar").stat().st_size + 100)
    with pytest.raises(OSError) as failed:
        extract_locally(source, PixelTokenizer(17), out, **options)  # shard 0 fits, shard 1 does not
    assert str(failed.value) == f"cannot write {out / '000001.tar'}: {ENOSPC}"
    assert sorted(p.name for p in out.iterdir()) == ["000000.json", "000000.tar"]  # no temporary, no manifest
    first = (out / "000000.tar").stat()
    disk.free = None  # space freed: the rerun writes shards 1 and 2 only
    rerun = extract_locally(source, PixelTokenizer(17), out, **options)
    assert [s.sha256 for s in rerun.shards] == [s.sha256 for s in clean.shards]
    assert (out / "000000.tar").stat().st_ino == first.st_ino  # not written again
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ other writers
def write_results(path: Path) -> None:
    ResultsFile(path).write([{"experiment": "digits", "checkpoint": "c.ckpt", "scheduler": "halton",
                              "steps": i + 1, "fid": 1.5 + i} for i in range(100)])


def write_png(path: Path) -> None:
    from halton.utils.images import save_png

    save_png(torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8), path)


def write_safetensors_export(path: Path) -> None:
    from safetensors.torch import save_file

    from halton.export import replace_folder

    replace_folder(path, lambda folder: save_file({"w": torch.zeros(10_000)}, str(folder / "model.safetensors")))


@pytest.mark.parametrize("write", [write_results, write_png, write_safetensors_export],
                         ids=["results file", "sample grid", "export (safetensors)"])
def test_every_writer_names_the_file_on_a_full_disk(tmp_path, write):
    """The results file, the sample grids and export's folder, under a file size limit below what they write:
    one message naming the file (the folder, for export), the earlier version intact, no temporary left."""
    path = tmp_path / {write_results: "results.csv", write_png: "grid.png", write_safetensors_export: "hf"}[write]
    if write is write_png:
        Image.new("RGB", (64, 64)).save(path)  # the grid of an earlier run
    with file_size_limit(4096), pytest.raises(OSError) as failed:
        write(path)
    assert str(failed.value).startswith(f"cannot write {path}: File too large (EFBIG); raise the file size limit")
    assert str(failed.value).endswith(KEPT)
    if write is write_png:
        assert Image.open(path).size == (64, 64)  # the earlier grid
    else:
        assert not path.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


# -------------------------------------------------------------------------------------- the commands, for real
def run_with_file_size_limit(size: int, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr without progress bars (tqdm's lines: "extracting:  25%|...")."""
    return [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]


@pytest.mark.slow  # train.py in a fresh process, twice
def test_train_py_on_a_full_disk(tmp_path):
    """A run to step 4, then resumed under a file size limit below a checkpoint's size: the save of step 6 fails
    with one line, exit code 2; the checkpoints of steps 2 and 4 are intact and loadable, no temporary is left, and
    the run folder's lock is released."""
    tiny = [*TINY, "trainer.enable_progress_bar=false", f"paths.runs_dir={tmp_path}"]
    first = subprocess.run([sys.executable, "train.py", *tiny], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "tiny" / "checkpoints"
    before = {p.name: digest(p) for p in folder.iterdir()}
    assert sorted(before) == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]
    started = time.monotonic()
    result = run_with_file_size_limit((folder / "last.ckpt").stat().st_size // 2, "train.py",
                                      *[a if a != "trainer.max_steps=4" else "trainer.max_steps=6" for a in tiny])
    took = time.monotonic() - started
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert result.returncode == 2 and errors == [f"error: cannot write {folder / 'step_0000006.ckpt'}: "
                                                 f"{EFBIG.format('paths.runs_dir=DIR')}"], result.stderr[-3000:]
    assert {p.name: digest(p) for p in folder.iterdir()} == before  # intact, and no temporary
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 4
    assert not (tmp_path / "tiny" / ".run.lock.owner").exists()  # the run folder's lock was released
    print(f"train.py on a full disk: exit 2 in {took:.1f} s")


@pytest.mark.slow  # the extraction command in a fresh process
def test_the_extraction_command_on_a_full_disk(tmp_path):
    args = ["-m", "halton.data.writing.extract_codes", "data=digits_shards", "source.format=digits",
            "source.shard_size=400", "split=train", "flip=false", "chunk_size=32", "num_workers=0",
            "trainer.accelerator=cpu", "trainer.devices=1", f"paths.data_dir={tmp_path}",
            f"paths.runs_dir={tmp_path / 'runs'}"]
    result = run_with_file_size_limit(20_000, *args, timeout=300)  # a shard of 400 codes is about 60 kB
    out = tmp_path / "digits_shards" / "train"
    assert result.returncode == 2, result.stderr[-3000:]
    assert stderr_lines(result) == [f"error: cannot write {out / '000000.tar'}: {EFBIG.format('out_dir=DIR')}"]
    assert list(out.iterdir()) == []  # nothing half-written
    rerun = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "wrote 1617 samples in 5 shards" in rerun.stdout, rerun.stderr[-3000:]
