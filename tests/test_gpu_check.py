"""benchmarks/gpu_check.py --dry-run: every stage of the GPU check at tiny sizes on the CPU, so the script is known to
work before a GPU is spent on it. The default run covers the benchmark stages (about a minute); the whole dry run,
with the pipeline's train.py / sample.py / evaluate.py runs (benchmarks/gpu_pipeline.py), is in the slow set."""

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the default run: the step benchmark's stage (and the side-by-side stages, skipped without a reference checkout);
# the other benchmark stages run the same scripts and are in the slow full dry run
BENCHMARK_STAGES = ["mfu_xl", "sampling_large", "reference_xl16"]
PIPELINE_STAGES = ["train_xl", "resume", "sample_evaluate_tests"]


def dry_run(tmp_path, stages=None) -> dict:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {"OUT": str(out), "GPU_CHECK_WORK": str(work), "REFERENCE": str(tmp_path / "no_reference"),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    only = ["--only", ",".join(stages)] if stages else []
    command = [sys.executable, "benchmarks/gpu_check.py", "--dry-run", *only]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode == 0, f"{summary}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json", "table.md"]
    assert result.stdout.rstrip().endswith((out / "table.md").read_text().rstrip())  # the table is printed last
    return summary


@pytest.mark.slow  # 52 s: the default run stays under 5 minutes on 2 cores; the benchmark stages' own loops are
# tested in tests/test_speed.py and tests/test_benchmarks.py
def test_dry_run_of_the_benchmark_stages(tmp_path):
    summary = dry_run(tmp_path, BENCHMARK_STAGES)
    assert list(summary["stages"]) == BENCHMARK_STAGES  # in order of importance
    statuses = {name: stage["status"] for name, stage in summary["stages"].items()}
    # without a reference checkout the side-by-side stages say so, and the others pass
    assert statuses == {**dict.fromkeys(BENCHMARK_STAGES, "ok"),
                        "reference_xl16": "skipped (no reference checkout: set REFERENCE)",
                        "sampling_large": "skipped (no reference checkout: set REFERENCE)"}
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        names = set(tar.getnames())
        mfu = json.load(tar.extractfile("mfu_xl.json"))
        profile = tar.extractfile("mfu_xl.profile.md").read().decode()
    assert {"mfu_xl.log", "mfu_xl.json", "mfu_xl.profile.md"} <= names
    rows = mfu["rows"]
    assert set(rows) == {"bare", "lightning", "bare[compiled_update]", "bare[batch64_update]"}
    assert all(row["images_per_s"] > 0 for row in rows.values()) and rows["bare[batch64_update]"]["batch"] == 8
    assert mfu["lightning_over_bare"] > 0 and mfu["gflop_per_image"] > 0
    for loop in ("profile", "profile_lightning"):  # the bare loop's and Lightning's, each with its table
        assert f"## {loop}\n" in profile and mfu[loop]["steps"] == 5 and mfu[loop]["wall_ms_per_step"] > 0
    assert profile.count("| family | ms / step | share |") == 2 and "idle (no kernel running)" in profile
    assert "host synchronisations per step" in profile
    assert "bare:" in " ".join(summary["stages"]["mfu_xl"]["results"])


@pytest.mark.slow
def test_dry_run_of_every_stage(tmp_path):
    """The pipeline stages too: the real train.py (stopped by SIGTERM and resumed), sample.py, evaluate.py and the
    demo at tiny sizes."""
    summary = dry_run(tmp_path)
    assert [s for s in summary["stages"] if summary["stages"][s]["status"] == "ok"] == [
        "train_xl", "resume", "mfu_xl", "ours_xl16", "mfu_t2i", "sample_evaluate_tests", "kernels"]
    stages = {}
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        for part in ("pipeline_train", "pipeline_resume", "pipeline_sample"):
            stages.update(json.load(tar.extractfile(f"{part}/pipeline.json"))["stages"])
    steps = 6  # the pipeline's dry run
    assert stages["fixtures"]["reference_images"] == 40
    a = stages["train_a"]
    assert a["final_step"] == steps and a["has_ema"] and a["throughput"]["images_per_s"] > 0
    resume = stages["resume"]
    assert resume["b_returncode"] == 143  # stopped by SIGTERM after saving
    assert resume["sigterm_sent_at_step"] <= resume["saved_step"] < steps
    assert resume["c_resumed"] and resume["c_first_step"] == resume["saved_step"]
    assert resume["final_step_a"] == resume["final_step_c"] == steps
    assert resume["lr_equal"] and resume["metrics_lr_a"] == resume["metrics_lr_c"] > 0
    for what in ("ema", "live"):  # on the CPU the resumed run is the uninterrupted one, bit for bit
        assert resume[f"{what}_max_abs_diff"] == 0 and resume[f"{what}_rel_norm_diff"] == 0
        assert resume[f"{what}_change_since_sigterm_rel_norm"] > 0
    assert stages["sample"]["grid"].endswith(".png")
    row = stages["evaluate"]["row"]
    assert stages["evaluate"]["rows"] == 1 and row["num_images"] == "20" and math.isfinite(float(row["fid"]))
    digits = stages["digits"]
    assert math.isfinite(digits["final_loss"]) and 0 <= digits["recognised_pct"] <= 100
