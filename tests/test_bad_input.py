"""Bad values and damaged files: the one line that names the value or file, from the checks every entry point runs
before its task (in this process), and for a few of them the command line's contract (exit code 2, that line on
stderr, nothing written). Then what happens after a failure, on resume, and the permissions of written files."""

from __future__ import annotations

import os
import re
import shutil
import stat

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, TINY_NET, run

NO_GPU = not torch.cuda.is_available()


class PickledCode:
    """Unpickling this would run a shell command: a checkpoint holding it must be refused, never run."""

    def __reduce__(self):
        return os.system, ("touch PWNED",)


def png_header(width: int, height: int) -> bytes:
    """A PNG file whose header says width x height (8-bit grey) and whose image data is a few bytes: PIL reads its
    size, and decoding it would need width x height pixels (a decompression bomb's claim, without the bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_files(tiny_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_files")
    last = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    (folder / "empty.ckpt").touch()
    (folder / "text.ckpt").write_text("this is a text file, not weights\n")
    (folder / "truncated.ckpt").write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    torch.save({"state_dict": {}, "hook": PickledCode()}, folder / "code.ckpt")
    (folder / "a_file").write_text("a file where a folder is needed\n")
    (folder / "images").mkdir()
    (folder / "bomb.png").write_bytes(png_header(10000, 10000))
    return {"tiny": str(last), **{p.stem: str(p) for p in folder.iterdir()}}


# (entry point, arguments, what the one line must contain). {name} is a path from bad_files; every sample and
# evaluate case loads the tiny model (TINY_NET) unless it tests the checkpoint.
CASES = [
    ("train.py", ["trainer.max_steps=3.5"], "trainer.max_steps=3.5 is not a whole number; allowed: >= 1"),
    ("train.py", ["trainer.max_steps=x"], "trainer.max_steps='x' is not a whole number"),
    ("train.py", ["trainer.max_steps=-5"], "trainer.max_steps=-5 is out of range; allowed: >= 1"),
    ("train.py", ["trainer.devices=0"], "trainer.devices=0 is out of range; allowed: >= 1"),
    ("train.py", ["trainer.precision=fp8"], "trainer.precision='fp8' is not a precision; allowed: 32-true"),
    ("train.py", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 is out of range; allowed: >= 0"),
    ("train.py", ["model.lr=nan"], "model.lr=nan is not finite; allowed: > 0"),
    ("train.py", ["model.lr=0"], "model.lr=0 is out of range; allowed: > 0"),
    ("train.py", ["model.label_dropout=1.5"], "model.label_dropout=1.5 is out of range; allowed: >= 0 and <= 1"),
    ("train.py", ["model.mask_schedule=exp2"], "model.mask_schedule='exp2' is not one of the choices; allowed: arccos"),
    ("train.py", ["model.sample_grid.cfg_weight=inf"], "model.sample_grid.cfg_weight=inf is not finite"),
    ("train.py", ["data.batch_size=0"], "data.batch_size=0 is out of range; allowed: >= 1"),
    ("train.py", ["callbacks.ema.decay=2"], "callbacks.ema.decay=2 is out of range; allowed: >= 0 and <= 1"),
    ("train.py", ["callbacks.progress_bar.train_metrics=[train/los]"],
     "callbacks.progress_bar.train_metrics: 'train/los' is not logged in training; allowed: a list of train/loss, "
     "train/acc"),
    ("train.py", ["callbacks.progress_bar.refresh_rate=-1"],
     "callbacks.progress_bar.refresh_rate=-1 is out of range; allowed: >= 0 (0 hides the bar)"),
    ("train.py", ["seed=-1"], "seed=-1 is out of range; allowed: 0 to 4294967295"),
    ("train.py", ["name=../../elsewhere"], "name='../../elsewhere' is not a run name"),
    ("train.py", ["name=a/b"], "name='a/b' is not a run name"),
    ("train.py", ["schedular=halton"], "unknown option schedular=halton: there is no key 'schedular'; did you mean"),
    ("train.py", ["sampler=confidence"], "unknown option sampler=confidence; use scheduler=confidence"),
    ("train.py", ["experiment=imagenet_xxl"], "unknown experiment 'imagenet_xxl'; allowed: c2i_xl, digits"),
    ("train.py", ["ckpt_path={missing}"], "ckpt_path not found: {missing}"),
    ("train.py", ["ckpt_path={empty}"], "ckpt_path {empty} is empty (0 bytes)"),
    ("train.py", ["ckpt_path={code}"], "ckpt_path {code} refused: the file holds pickled code, not only weights"),
    ("train.py", ["ckpt_path={tiny}"], "checkpoint {tiny} is of another configuration: cls_emb.weight is [11, 32]"),
    pytest.param("train.py", ["trainer=gpu"], "trainer.accelerator=gpu but no CUDA GPU is visible here",
                 marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is visible")),
    ("sample.py", ["cfg_weight=nan"], "cfg_weight=nan is not finite; allowed: >= 0 (0 disables guidance)"),
    ("sample.py", ["cfg_weight=inf"], "cfg_weight=inf is not finite"),
    ("sample.py", ["temp_max=nan"], "temp_max=nan is not finite; allowed: > 0"),
    ("sample.py", ["temp_min=0"], "temp_min=0 is out of range; allowed: > 0"),
    ("sample.py", ["steps=3.5"], "steps=3.5 is not a whole number; allowed: 1 to 64 (the number of tokens)"),
    ("sample.py", ["classes=abc"], "classes='abc' is not a whole number; allowed: 0 to 9"),
    ("sample.py", ["top_k=-1"], "top_k=-1 is out of range; allowed: 0 to 17"),
    ("sample.py", ["schedule_power=0"], "schedule_power=0 is out of range; allowed: > 0 (the poly exponent)"),
    ("evaluate.py", ["schedule_rate=nan"], "schedule_rate=nan is not finite; allowed: > 0 (the exp and log rate)"),
    ("sample.py", ["per_class=0"], "per_class=0 is out of range; allowed: >= 1"),
    # requests that cannot fit, and products of values that overflow float32: refused before anything loads
    ("sample.py", ["per_class=10000000"], "per_class=10000000 needs at least 1.61 TiB at once (100000000 samples "
                                          "drawn in one batch), more than the"),
    ("evaluate.py", ["num_images=1000000000000"], "num_images=1000000000000 needs at least 276 TiB at once (the "
                                                  "conditions and digits features of every image"),
    ("evaluate.py", ["batch_size=100000000"], "batch_size=100000000 needs at least 1.61 TiB at once (one batch"),
    ("train.py", ["data.batch_size=1000000000"], "data.batch_size=1000000000 needs at least 59.6 TiB at once (the 2 "
                                                 "blocks' inputs kept for the backward pass)"),
    ("sample.py", ["cfg_weight=1e308"], "cfg_weight=1e+308 scales the logits by (1 + cfg_weight) * temperature ** "
                                        "temp_pow = about 1e308"),
    ("evaluate.py", ["temp_min=1e308", "temp_max=1e308"], "temp_max=1e+308 scales the logits by"),
    ("sample.py", ["temp_max=10", "temp_pow=1000"], "temp_pow=1000 scales the logits by (1 + cfg_weight) * "
                                                    "temperature ** temp_pow = about 1e1000"),
    ("train.py", ["model.sample_grid.cfg_weight=1e308"], "model.sample_grid.cfg_weight=1e+308 scales the logits"),
    ("sample.py", ["edit.image={bomb}", "edit.box=[0,0,4,4]"], "edit.image={bomb} has 100000000 pixels "
                                                                "(10000x10000); allowed: at most 16777216"),
    ("sample.py", ["edit.image={text}", "edit.box=[0,0,4,4]"], "edit.image={text} is not an image; allowed: PNG"),
    ("sample.py", ["device=gpu7"], "device='gpu7' is not a device; allowed: auto, cpu, cuda, cuda:N, mps"),
    ("sample.py", ["progression=maybe"], "progression='maybe' is not a boolean; allowed: true, false"),
    ("sample.py", ["scheduler.r_temp=3"], "scheduler.r_temp is not an option of the halton scheduler; allowed: "
                                          "scheduler.randomize"),
    ("sample.py", ["scheduler.randomize=maybe"], "scheduler.randomize='maybe' is not a boolean"),
    ("sample.py", ["scheduler=confidence", "scheduler.r_temp=nan"], "scheduler.r_temp=nan is not finite"),
    ("sample.py", ["scheduler=confidence", "scheduler.guidance=sometimes"],
     "unknown guidance 'sometimes'; allowed: ramp, constant"),
    ("sample.py", ["out_dir={a_file}/grids"], "out_dir={a_file}/grids cannot be written: {a_file} is a file"),
    ("sample.py", ["checkpoint={empty}"], "checkpoint {empty} is empty (0 bytes)"),
    ("sample.py", ["checkpoint={text}"], "checkpoint {text} is not a checkpoint: neither a torch.save zip file"),
    ("sample.py", ["checkpoint={truncated}"], "checkpoint {truncated} is truncated or damaged"),
    ("sample.py", ["checkpoint={code}"], "checkpoint {code} refused: the file holds pickled code, not only weights"),
    ("sample.py", ["checkpoint={images}"], "checkpoint not found: {images} (a folder; allowed: a file)"),
    ("evaluate.py", ["num_images=105"], "num_images=105 is not a multiple of the 10 classes"),
    ("evaluate.py", ["batch_size=0"], "batch_size=0 is out of range; allowed: >= 1"),
    ("evaluate.py", ["cfg_weight=nan"], "cfg_weight=nan is not finite"),
    ("evaluate.py", ["reference.kind=magic"], "reference.kind='magic' is not one of the choices; allowed: digits"),
    ("evaluate.py", ["reference.kind=folder", "reference.path={missing}"],
     "reference.path={missing}: no such folder"),
    ("evaluate.py", ["extractor=inception", "inception_weights={text}"], "inception_weights {text} is not a checkpoint"),
    ("evaluate.py", ["intermediate_steps=[0]"], "intermediate_steps=0 is out of range; allowed: 1 to 32"),
    ("evaluate.py", ["results={a_file}/results.csv"], "results={a_file}/results.csv cannot be written"),
    ("evaluate.py", ["name=.hidden"], "name='.hidden' is not a run name"),
    ("evaluate.py", ["checkpoint={truncated}"], "checkpoint {truncated} is truncated or damaged"),
    ("evaluate.py", ["-m", "steps=16,99"], "steps=99 is out of range; allowed: 1 to 64"),  # before any cell runs
    ("sample.py", ["prompt=a red fox in the snow"], "prompt is for text-to-image models; experiment=digits is "
                                                    "class-conditional: give classes=[...]"),
    ("sample.py", ["prompt=''"], "prompt='' is empty; allowed: a text"),
    ("sample.py", ["experiment=digits_t2i", "prompt_file={missing}"], "prompt_file not found: {missing}"),
    ("sample.py", ["experiment=digits_t2i", "prompts=[a fox,'']"], "prompts[1]='' is empty"),
    ("sample.py", ["experiment=digits_t2i", "classes=3"], "classes=3 is for class-conditional models"),
    ("evaluate.py", ["experiment=digits_t2i", "prompt_set.source=poems"],
     "prompt_set.source='poems' is not one of the choices; allowed: coco, file, digits"),
    ("evaluate.py", ["experiment=digits_t2i", "prompt_set.source=coco"], "no prompt_set.path given"),
    ("evaluate.py", ["experiment=digits_t2i", "clip_model=/no/such/clip"], "clip_model=/no/such/clip: no such folder"),
    ("-m halton.data.extract", ["data=digits_t2i", "source.format=digits", "source.captions=false"],
     "text.embeddings=precompute encodes captions, but source.format=digits has none"),
    ("-m halton.data.extract", ["source.path={missing}"], "source.path={missing}: no such file or folder"),
    ("-m halton.data.extract", ["source.path={images}"], "vq_checkpoint is not set: extraction needs the tokenizer "
                                                         "weights (vq_ds8_c2i.pt); pass vq_checkpoint=PATH"),
    ("-m halton.data.extract", ["source.path={images}", "vq_checkpoint={text}"],
     "vq_checkpoint {text} is not a checkpoint"),
    ("-m halton.data.extract", ["data=digits_shards", "source.path={images}"],
     "source.format=auto with a PixelTokenizer data config: it encodes the grey-level digits only"),
    ("-m halton.data.extract", ["data=digits_shards", "source.format=digits", "chunk_size=0"],
     "chunk_size=0 is out of range; allowed: >= 1"),
    ("-m halton.data.extract", ["source.format=zip"], "source.format='zip' is not one of the choices"),
    ("-m halton.data.extract", ["data=digits_shards", "source.format=digits", "out_dir={a_file}/x"],
     "out_dir={a_file}/x cannot be written"),
    ("-m halton.data.extract", ["source.path=/data/{{000..009}}.tar"],
     "cannot read source.path=/data/{{000..009}}.tar: mismatched input '{{' expecting <EOF>; quote a value"),
]


ENTRIES = {"train.py": "train", "sample.py": "sample", "evaluate.py": "evaluate", "-m halton.data.extract": "extract"}


def case_id(case) -> str:
    entry, args = (case.values if hasattr(case, "values") else case)[:2]
    return f"{entry.removeprefix('-m halton.data.').removesuffix('.py')}: {' '.join(args)}"


def arguments(entry: str, args: list[str], files: dict, folder) -> list[str]:
    args = [a.format(missing=folder / "missing.ckpt", **files) for a in args]
    paths = [f"paths.runs_dir={folder / 'runs'}", f"paths.data_dir={folder / 'data'}"]
    if entry in ("sample.py", "evaluate.py"):
        model = [] if any(a.startswith("checkpoint=") for a in args) else TINY_NET
        return [f"checkpoint={files['tiny']}", *model, *paths, *args]
    return [*paths, *args]


def refusal(entry: str, argv: list[str]) -> str:
    """The line the entry point answers ``argv`` with, from the checks it runs before Hydra starts the task
    (:func:`halton.cli.preflight`: the same composition, validation and input checks), in this process."""
    from halton.cli import preflight
    from halton.options import Invalid

    with pytest.raises(Invalid) as error:
        preflight(argv, ENTRIES[entry])
    return str(error.value)


@pytest.mark.parametrize("entry,args,message", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(bad_files, tmp_path, entry, args, message):
    line = refusal(entry, arguments(entry, args, bad_files, tmp_path))
    assert "\n" not in line and message.format(missing=tmp_path / "missing.ckpt", **bad_files) in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused run wrote files"
    assert not (ROOT / "PWNED").exists()  # the pickled code never ran


# The command line's own contract, for a few rows of every kind (a value, a type the schema refuses while
# composing, a sweep, a damaged checkpoint, extraction): a fresh process, one line on stderr, exit code 2.
CONTRACT = [("train.py", ["trainer.max_steps=x"]), ("sample.py", ["steps=3.5"]),
            ("sample.py", ["checkpoint={code}"]), ("evaluate.py", ["-m", "steps=16,99"]),
            ("-m halton.data.extract", ["source.format=zip"])]


@pytest.mark.parametrize("entry,args", CONTRACT, ids=[case_id(c) for c in CONTRACT])
def test_the_command_line_says_one_line_exits_2_and_writes_nothing(bad_files, tmp_path, entry, args):
    message = next(m for e, a, m in (c.values if hasattr(c, "values") else c for c in CASES) if (e, a) == (entry, args))
    result = run(entry, *arguments(entry, args, bad_files, tmp_path), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines == [f"error: {refusal(entry, arguments(entry, args, bad_files, tmp_path))}"], result.stderr[-2000:]
    assert message.format(missing=tmp_path / "missing.ckpt", **bad_files) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed run wrote files"
    assert not (ROOT / "PWNED").exists()


def test_the_table_covers_every_entry_point_and_forty_inputs():
    entries = {(c.values if hasattr(c, "values") else c)[0] for c in CASES}
    assert entries == set(ENTRIES) and len(CASES) >= 40


# ------------------------------------------------------------------ after validation
def test_a_run_that_fails_later_removes_the_folder_it_made(tmp_path):
    """Shards whose manifest disagrees with the data config are found only when the data module reads them,
    after Hydra made the run folder and Lightning its logs: all of it is removed again."""
    from test_configs import compose_job, make_code_shards

    args = ["experiment=digits", *TINY_NET, "data=imagenet_codes", f"data.root={tmp_path / 'codes'}",
            "model.sample_grid=null", "trainer.max_steps=2", f"paths.root_dir={tmp_path}", "name=later"]
    make_code_shards(tmp_path / "codes", compose_job("train", args).data)
    result = run("train.py", *args, "data.num_classes=7", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: data.num_classes=7 but the shards in {tmp_path / 'codes' / 'train'} have "
                     "num_classes=1000 (tokenizer LlamaGenVQ); use a data config that matches them or extract them "
                     "again"], result.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_falls_back_to_the_newest_readable_checkpoint(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "tiny" / "checkpoints", runs / "tiny" / "checkpoints")
    folder = runs / "tiny" / "checkpoints"
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:1000])  # a save cut short
    stale = folder / ".step_0000006.ckpt.abc123.tmp"
    stale.write_bytes(b"\0" * 4096)  # left by a save killed with -9
    os.utime(folder / "step_0000002.ckpt", (1, 1))  # the older one
    result = run("train.py", *TINY, f"paths.runs_dir={runs}", "trainer.max_steps=6")
    assert f"resuming from {folder / 'step_0000004.ckpt'}, the newest readable checkpoint: checkpoint " \
           f"{folder / 'last.ckpt'} is truncated or damaged" in result.stderr
    assert f"removed {stale}, left by a save that was interrupted" in result.stdout
    assert not stale.exists()
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 6


def test_a_reference_folder_with_a_file_that_is_not_an_image(tmp_path):
    from halton.evaluation.reference import reference_source

    (tmp_path / "a.png").write_bytes(b"\x89PNG but not really")
    _, _, batches = reference_source("folder", str(tmp_path), (8, 8), 10)
    with pytest.raises(ValueError, match=rf"reference image {tmp_path / 'a.png'} is not an image; allowed: PNG"):
        list(batches)


@pytest.mark.parametrize("side,size", [(5000, "25000000 pixels (5000x5000)"), (20000, "400000000 pixels")])
def test_decompression_bombs_are_refused_from_their_header(tmp_path, side, size):
    """A reference image and an image to edit claiming more pixels than the limit: one line from the header, nothing
    decoded (over twice PIL's own limit PIL refuses the header itself; the line still gives the count). The app's
    uploads: tests/test_hostile_app.py."""
    from halton.evaluation.reference import reference_source
    from halton.sampling.editing import read_image

    (tmp_path / "a" / "0").mkdir(parents=True)
    (tmp_path / "a" / "0" / "bomb.png").write_bytes(png_header(side, side))
    _, _, batches = reference_source("folder", str(tmp_path / "a"), (8, 8), 10)
    with pytest.raises(ValueError) as error:
        list(batches)
    assert str(error.value) == (f"reference image {tmp_path / 'a' / '0' / 'bomb.png'} has {size}; allowed: at most "
                                "16777216 (e.g. 4096x4096); scale it down first")
    with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path / 'a' / '0' / 'bomb.png'} has {size}; allowed")):
        read_image(tmp_path / "a" / "0" / "bomb.png", (8, 8), 1)


def test_a_pixel_tokenizer_refuses_colour_images():
    from halton.tokenizers import PixelTokenizer

    with pytest.raises(ValueError, match=r"a PixelTokenizer encodes grey-level images \[B, 1, H, W\]; got \[2, 3, 8, 8\]"):
        PixelTokenizer(17).encode(torch.zeros(2, 3, 8, 8))


# ------------------------------------------------------------------ permissions
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    from halton.data.format.chunks import Chunk, strings, write_shard
    from halton.evaluation.results import ResultsFile
    from halton.training import AtomicCheckpointIO
    from halton.utils.checkpoint import atomic_torch_save
    from halton.utils.files import atomic_write
    from halton.utils.images import save_png

    old = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "ckpt" / "last.ckpt")
        atomic_torch_save({"a": torch.ones(1)}, tmp_path / "weights.pt")
        save_png(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "grid.png")
        ResultsFile(tmp_path / "eval" / "results.csv").write([{"scheduler": "halton", "fid": 1.0}])
        atomic_write(tmp_path / "cache" / "stats.npz", lambda tmp: np.savez(tmp, mu=np.zeros(2)))
        codes = np.zeros((2, 4, 4), dtype=np.uint16)
        write_shard(tmp_path / "shards" / "000000.tar",
                    [Chunk(codes, np.zeros(2, np.int32), strings(["a", "b"]), None, None)], source="test")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".ckpt", ".pt", ".png", ".csv", ".npz", ".tar"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_train_and_sample_outputs_are_readable_by_others(tiny_run):
    from halton.utils.files import default_mode

    expected = default_mode()  # the test process's umask, which train.py inherited
    written = [*(tiny_run / "tiny" / "checkpoints").glob("*.ckpt"), *(tiny_run / "tiny").rglob("*.png")]
    assert written and {stat.S_IMODE(p.stat().st_mode) for p in written} == {expected}

