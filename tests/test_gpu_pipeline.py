"""benchmarks/gpu_pipeline.py --dry-run: the GPU run's pipeline (fixtures, training, SIGTERM and resume, sampling,
evaluation, the demo) at tiny sizes on the CPU, through the real entry points."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(tmp_path, *stages):
    out = tmp_path / "out"
    command = [sys.executable, "benchmarks/gpu_pipeline.py", "--work", str(tmp_path / "work"), "--out", str(out),
               "--dry-run"] + (["--stages", ",".join(stages)] if stages else [])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "pipeline.json").read_text())
    failed = {k: (v.get("exception") or v.get("errors")) for k, v in report["stages"].items() if not v["ok"]}
    assert result.returncode == 0 and not failed, f"{failed}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "| stage | result | wall s | numbers |" in result.stdout
    for stage in stages or report["stages"]:
        assert (out / f"{stage}.log").stat().st_size > 0
    return report["stages"]


def check_training_and_resume(stages):
    steps = 6  # the dry run's
    a = stages["train_a"]
    assert a["final_step"] == steps and a["has_ema"]
    assert a["throughput"]["images_per_s"] > 0  # the Throughput callback's perf/* columns, or the progress bar's
    resume = stages["resume"]
    assert resume["b_returncode"] == 143  # stopped by SIGTERM after saving
    assert resume["sigterm_sent_at_step"] <= resume["saved_step"] < steps
    assert resume["c_resumed"] and resume["c_first_step"] == resume["saved_step"]
    assert resume["final_step_a"] == resume["final_step_c"] == steps
    assert resume["lr_equal"] and resume["metrics_lr_a"] == resume["metrics_lr_c"] > 0
    for what in ("ema", "live"):  # on the CPU the resumed run is the uninterrupted one, bit for bit
        assert math.isfinite(resume[f"{what}_max_abs_diff"]) and resume[f"{what}_max_abs_diff"] == 0
        assert resume[f"{what}_rel_norm_diff"] == 0 < resume[f"{what}_change_since_sigterm_rel_norm"]


def test_dry_run_trains_stops_and_resumes(tmp_path):
    stages = dry_run(tmp_path, "fixtures", "train_a", "resume")
    assert stages["fixtures"]["reference_images"] == 40
    check_training_and_resume(stages)


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    stages = dry_run(tmp_path)
    check_training_and_resume(stages)
    assert stages["sample"]["grid"].endswith(".png") and Path(stages["sample"]["grid"]).is_file()
    row = stages["evaluate"]["row"]
    assert stages["evaluate"]["rows"] == 1 and row["num_images"] == "20" and math.isfinite(float(row["fid"]))
    assert float(row["images_per_s"]) > 0
    digits = stages["digits"]
    assert math.isfinite(digits["final_loss"]) and 0 <= digits["recognised_pct"] <= 100
