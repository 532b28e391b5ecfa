"""benchmarks/reference_train.py runs the reference trainer's step on CPU (smoke test; no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / ".reference" / "Halton-MaskGIT"


@pytest.mark.skipif(not (REFERENCE / "Trainer" / "cls_trainer.py").is_file(),
                    reason="no reference checkout at .reference/Halton-MaskGIT (git-ignored, not in a fresh clone: "
                           "copy github valeoai/Halton-MaskGIT there)")
def test_reference_train_step_runs_on_cpu():
    result = subprocess.run([sys.executable, "benchmarks/reference_train.py", "--reference", str(REFERENCE),
                             "--size", "tiny", "--grid", "8", "--batch", "4", "--steps", "2", "--warmup", "1",
                             "--device", "cpu", "--precision", "fp32"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"device .+, torch \S+; reference tiny \(23\.0M parameters\), batch 4, fp32, compile False",
                        lines[0]), lines[0]
    # the same format as the bare: and lightning: lines of benchmarks/train_step.py, less MFU
    results = [line for line in lines if line.startswith("reference:")]
    assert len(results) == 1, result.stdout
    assert re.fullmatch(r"reference: +\d+\.\d ms/step  +\d+\.\d images/s  peak memory nan GiB",
                        results[0]), results[0]
