"""benchmarks/gpu_check.py --dry-run: every stage of the GPU check at tiny sizes on the CPU, so the script is known to
work before a GPU is spent on it. The default run covers the benchmark stages (the pipeline's own stages have their
dry run in tests/test_gpu_pipeline.py); the whole dry run, pipeline included, is in the slow set."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_STAGES = ["mfu_xl", "reference_xl16", "ours_xl16", "kernels", "mfu_t2i", "sampling_large"]
PIPELINE_STAGES = ["train_xl", "resume", "sample_evaluate_tests"]


def dry_run(tmp_path, stages=None) -> dict:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {"OUT": str(out), "GPU_CHECK_WORK": str(work), "REFERENCE": str(tmp_path / "no_reference"),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    command = [sys.executable, "benchmarks/gpu_check.py", "--dry-run"] + (["--only", ",".join(stages)] if stages else [])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode == 0, f"{summary}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json", "table.md"]
    assert result.stdout.rstrip().endswith((out / "table.md").read_text().rstrip())  # the table is printed last
    return summary


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
    assert {"mfu_xl.log", "kernels.log", "kernels.json", "mfu_t2i.json", "ours_xl16.json"} <= names
    rows = mfu["rows"]
    assert set(rows) == {"bare", "lightning", "bare[eager_loss]", "bare[batch64]"}
    assert all(row["images_per_s"] > 0 for row in rows.values()) and rows["bare[batch64]"]["batch"] == 8
    assert mfu["lightning_over_bare"] > 0 and mfu["gflop_per_image"] > 0
    assert "| family | ms / step | share |" in profile and "idle (no kernel running)" in profile
    assert "bare:" in " ".join(summary["stages"]["mfu_xl"]["results"])


@pytest.mark.slow
def test_dry_run_of_every_stage(tmp_path):
    summary = dry_run(tmp_path)
    assert [s for s in summary["stages"] if summary["stages"][s]["status"] == "ok"] == [
        "mfu_xl", *PIPELINE_STAGES, "ours_xl16", "kernels", "mfu_t2i"]
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        resume = json.load(tar.extractfile("pipeline_resume/pipeline.json"))["stages"]["resume"]
    assert resume["ok"] and resume["final_step_c"] == resume["final_step_a"]
