"""The package as an installed wheel, used from a folder outside the clone: the configs (conf/, shipped as
halton/conf), the console scripts and the library; and the optional extras' one-line refusals."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, TINY

# what the wheel is built from (pip wheel . in a copy: the clone gets no build/ or egg-info folder)
SOURCES = ("pyproject.toml", "setup.py", "README.md", "halton", "conf")
CONSOLE_SCRIPTS = ("halton-train", "halton-sample", "halton-evaluate", "halton-extract", "halton-export", "halton-app",
                   "halton-report")
LIBRARY = """
import sys, torch, halton
from halton.models import MaskTransformer
from halton.sampling import HaltonScheduler, sample
from halton.validation import CONFIG_DIR
net = MaskTransformer(codebook_size=17, input_size=8, hidden_dim=32, depth=1, heads=2, num_classes=10).eval()
codes = sample(net, HaltonScheduler(), torch.tensor([3, 7]), steps=4, seed=0).codes
print(halton.__file__, CONFIG_DIR, tuple(codes.shape), int(codes.min()), int(codes.max()), sep="\\n")
"""


def test_logger_backends_are_extras(monkeypatch):
    """logger=wandb or logger=tensorboard without its package: one line naming the extra, before anything runs."""
    from halton.cli import composed_runs
    from halton.validation import validate

    for module in ("wandb", "tensorboard", "tensorboardX"):
        monkeypatch.setitem(sys.modules, module, None)  # find_spec: not installed
    for logger in ("wandb", "tensorboard"):
        (cfg,) = composed_runs([f"logger={logger}"], "train")
        with pytest.raises(ValueError) as refused:
            validate(cfg, "train")
        assert str(refused.value) == (f"logger={logger} needs {logger}, which the extra [{logger}] installs: "
                                      f"pip install -e '.[{logger}]' (in the clone) or pip install {logger}")
    (cfg,) = composed_runs(["logger=csv"], "train")
    validate(cfg, "train")  # the default logger needs no extra


@pytest.mark.slow
def test_wheel_outside_the_clone(tmp_path):
    """Build the wheel, install it (no dependencies, no network) into a fresh virtual environment that borrows this
    one's packages (torch, Hydra, Lightning), and from another folder: the library samples, the console scripts
    refuse a bad value in one line, and halton-train and halton-sample run the digits demo (tiny) with the wheel's
    configs."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source))
    (wheel,) = (tmp_path / "dist").glob("halton-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"halton/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(configs - names) == [] and len(configs) > 50  # every file of conf/ (setup.py's package_data)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # this environment's packages, after the new one's own (its .pth files are not run: no editable halton)
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(purelib, "borrowed.pth").write_text("".join(f"{p}\n" for p in paths))
    pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    bin_dir = python.parent
    assert all((bin_dir / name).is_file() or (bin_dir / f"{name}.exe").is_file() for name in CONSOLE_SCRIPTS)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HALTON_ROOT")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"

    def command(*args, check=True):
        result = subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    module, config_dir, shape, low, high = command(str(python), "-c", LIBRARY).stdout.split("\n")[:5]
    installed = Path(purelib) / "halton"
    assert (Path(module), Path(config_dir)) == (installed / "__init__.py", installed / "conf")
    assert shape == "(2, 8, 8)" and 0 <= int(low) <= int(high) < 17

    refused = command("halton-sample", "steps=0", check=False)
    assert (refused.returncode, refused.stderr.splitlines()) == (
        2, ["error: steps=0 is out of range; allowed: 1 to 64 (the number of tokens)"])
    for export in (["halton-export"], [str(python), "-m", "halton.export"]):
        refused = command(*export, "checkpoint=missing.ckpt", check=False)
        assert refused.returncode == 2 and refused.stderr.splitlines()[0].startswith(
            "error: checkpoint not found: missing.ckpt")
    if importlib.util.find_spec("gradio"):  # the extra [app]; without it the app's refusal says so
        refused = command(str(python), "-m", "halton.app", "checkpoint=missing.ckpt", check=False)
        assert refused.returncode == 2 and refused.stderr.splitlines()[0].startswith(
            "error: checkpoint not found: missing.ckpt")
    assert "Config groups (GROUP=CHOICE" in command("halton-evaluate", "--help").stdout  # halton.help, from the wheel

    tiny = [a for a in TINY if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=2"]
    command("halton-train", *tiny)
    run_dir = elsewhere / "runs" / "tiny"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "train.log").is_file()
    tiny_net = [a for a in TINY if a.startswith("model.net")]
    sampled = command("halton-sample", "experiment=digits", "name=tiny", *tiny_net, "steps=4", "per_class=1",
                      "classes=[3]", "device=cpu")
    assert [p.name for p in (run_dir / "samples").glob("*.png")] and "wrote" in sampled.stdout
    assert not (elsewhere / "conf").exists()


def pip(*args: str) -> None:
    """This environment's pip (``--python``: acting on another environment), quietly; its output if it fails."""
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
