"""End to end through the entry points: train a tiny digits model, sample it, and refuse bad values."""

import shutil

import pytest
from conftest import TINY, TINY_NET, assert_logged, run


@pytest.fixture(scope="module")
def trained(tiny_run):
    return tiny_run


def test_train_writes_checkpoints_logs_and_sample_grids(trained):
    run_dir = trained / "tiny"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "step_0000004.ckpt").is_file()
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
    grids = sorted((run_dir / "logs" / "version_0" / "samples").glob("step_*.png"))
    assert grids, "no sample grid was logged"


def test_resume_continues_from_last_checkpoint(trained, tmp_path):
    shutil.copytree(trained / "tiny", tmp_path / "tiny")  # the shared run stays at step 4 for the other tests
    trained = tmp_path
    result = run("train.py", *TINY, f"paths.runs_dir={trained}", "trainer.max_steps=6")
    assert "resuming from" in result.stdout
    assert (trained / "tiny" / "checkpoints" / "step_0000006.ckpt").is_file()
    # Progress in steps out of max_steps, starting where the run resumed (not "Epoch 3/-2")
    bar = [line for line in result.stdout.splitlines() if line.startswith("training")]
    assert bar and "6/6 [" in bar[-1] and all("/6 [" in line for line in bar), bar
    assert "Epoch" not in result.stdout
    assert_logged(result.stdout, trained / "tiny" / "train.log")
    assert "rank 0/1: trained to step 6" in result.stdout


# the other two schedulers' command lines in the slow set (their sampling is tested in-process)
@pytest.mark.parametrize("scheduler", ["halton", pytest.param("confidence", marks=pytest.mark.slow),
                                       pytest.param("random", marks=pytest.mark.slow)])
def test_sample_writes_a_labelled_grid(trained, scheduler):
    from PIL import Image

    ckpt = trained / "tiny" / "checkpoints" / "last.ckpt"
    out = trained / "grids"
    result = run("sample.py", "experiment=digits", f"checkpoint={ckpt}", f"scheduler={scheduler}", "steps=8",
                 "model.net.depth=1", "model.net.hidden_dim=32", "model.net.heads=2", "per_class=3",
                 f"out_dir={out}", "progression=true", "progression_samples=2", f"paths.runs_dir={trained}")
    grid = out / f"{scheduler}_steps8_cfg1_seed0.png"
    assert grid.is_file() and (out / f"{scheduler}_steps8_cfg1_seed0_progression.png").is_file()
    width, height = Image.open(grid).size
    assert height > 10 * 48 and width > 3 * 48  # 10 rows (classes) of 3 enlarged samples
    assert "a digit classifier reads the requested digit in" in result.stdout
    log_file = next(p for p in (trained / "digits" / "sample_logs").rglob("sample.log") if str(grid) in p.read_text())
    assert_logged(result.stdout, log_file)
    if scheduler != "halton":
        return
    # Another run whose images differ but whose file name would be the same: the earlier grid is kept
    before = grid.read_bytes()
    again = run("sample.py", "experiment=digits", f"checkpoint={ckpt}", "steps=8", "classes=[3]", "temp_max=3",
                *TINY_NET, "per_class=3", f"out_dir={out}", f"paths.runs_dir={trained}")
    assert grid.read_bytes() == before and (out / "halton_steps8_cfg1_seed0_1.png").is_file()
    assert (f"wrote {out / 'halton_steps8_cfg1_seed0_1.png'} (halton_steps8_cfg1_seed0.png is there already and is "
            "kept; overwrite=true replaces it)") in again.stdout


def test_an_output_is_replaced_only_when_asked(tmp_path):
    from halton.utils.files import unused_path

    assert unused_path(tmp_path / "grid.png") == tmp_path / "grid.png"
    (tmp_path / "grid.png").touch()
    (tmp_path / "grid_1.png").touch()
    assert unused_path(tmp_path / "grid.png") == tmp_path / "grid_2.png"
    assert unused_path(tmp_path / "grid.png", overwrite=True) == tmp_path / "grid.png"


def refusal(entry: str, *argv: str) -> str:
    """The line ``python <entry>.py ARGV`` is refused with, from the checks it runs before its task (in this
    process; tests/test_bad_input.py runs a few command lines in a fresh process too)."""
    from halton.cli import preflight
    from halton.options import Invalid

    with pytest.raises(Invalid) as error:
        preflight(list(argv), entry)
    return f"error: {error.value}"


@pytest.mark.parametrize("args,message", [
    (["scheduler=maskgit"], "error: unknown scheduler 'maskgit'; allowed: confidence, halton, random"),
    (["steps=0"], "error: steps=0 is out of range; allowed: 1 to 64 (the number of tokens)"),
    (["steps=65"], "error: steps=65 is out of range; allowed: 1 to 64 (the number of tokens)"),
    (["cfg_weight=-1"], "error: cfg_weight=-1 is out of range; allowed: >= 0 (0 disables guidance)"),
    (["classes=[3,12]"], "error: classes=12 is out of range; allowed: 0 to 9"),
    (["schedule=exp2"], "error: schedule='exp2' is not one of the choices; allowed: arccos, cosine, linear, "
                        "square, root, poly, exp, log"),
])
def test_sample_rejects_bad_values(trained, args, message):
    ckpt = trained / "tiny" / "checkpoints" / "last.ckpt"
    assert refusal("sample", "experiment=digits", f"checkpoint={ckpt}", "model.net.depth=1", "model.net.hidden_dim=32",
                   "model.net.heads=2", f"out_dir={trained / 'bad'}", f"paths.runs_dir={trained}", *args) == message
    assert not (trained / "bad").exists()  # nothing half-written


def test_missing_checkpoint(tmp_path):
    assert refusal("sample", "experiment=digits", f"checkpoint={tmp_path}/nope.ckpt", f"paths.runs_dir={tmp_path}") == (
        f"error: checkpoint not found: {tmp_path}/nope.ckpt; train.py writes runs/<name>/checkpoints/last.ckpt, or "
        "pass checkpoint=PATH")
    assert refusal("sample", "experiment=digits", f"paths.runs_dir={tmp_path}") == (  # nothing trained yet
        f"error: checkpoint not found: {tmp_path}/digits/checkpoints/last.ckpt; train.py writes "
        "runs/<name>/checkpoints/last.ckpt, or pass checkpoint=PATH")
    assert refusal("sample", "experiment=hmaskgit_t_256", "checkpoint=null", f"paths.runs_dir={tmp_path}") == (
        "error: no checkpoint given; pass checkpoint=PATH")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_that_does_not_fit_the_config(trained):
    ckpt = trained / "tiny" / "checkpoints" / "last.ckpt"
    assert refusal("sample", "experiment=digits", f"checkpoint={ckpt}", f"paths.runs_dir={trained}") == (
        f"error: checkpoint {ckpt} is of another configuration: cls_emb.weight is [11, 32] there, [11, 128] in this "
        "model config (20 weights differ)")  # the default 4-layer config


def test_train_rejects_unknown_experiment():
    assert refusal("train", "experiment=imagenet_xxl").startswith("error: unknown experiment 'imagenet_xxl'; allowed: ")
