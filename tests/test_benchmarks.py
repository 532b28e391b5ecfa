"""The benchmark scripts run (smoke tests on tiny presets; no timing is asserted)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_train_step_counts_the_head_on_the_scored_tokens_only():
    import train_step

    from halton.training.throughput import training_flops_per_image

    module = train_step.make_module(type("Args", (), {"preset": "digits", "compile": False})(), torch.device("cpu"))
    model_flops, executed = training_flops_per_image(module)
    head = 3 * 2 * 64 * 128 * 18  # forward + backward of the 128 -> 18 head on the 64 positions
    assert executed > head and math.isclose(executed - model_flops, head * (1 - 2 / math.pi), rel_tol=1e-6)
    assert all(p.grad is None for p in module.model.parameters())  # the count leaves no gradients behind


@pytest.mark.slow  # the GPU check's default dry run runs train_step.py's two loops
def test_train_step_runs_both_loops_on_cpu():
    result = subprocess.run([sys.executable, "benchmarks/train_step.py", "--preset", "digits", "--batch", "4",
                             "--steps", "2", "--warmup", "1", "--device", "cpu", "--precision", "fp32"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device ") and "preset digits (0.6M parameters), batch 4" in lines[0]
    assert any(line.strip().startswith("bare:") and "images/s" in line for line in lines)
    assert any(line.strip().startswith("lightning:") and "images/s" in line for line in lines)
    assert lines[-1].startswith("Lightning / bare: ")


def test_compiled_update_is_clipping_adamw_and_the_ema():
    """The train_step lever that folds clipping, AdamW and the EMA into one function: the same numbers as the three
    torch calls (run eagerly here; on a GPU the same function is compiled)."""
    import train_step

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    b = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    b.load_state_dict(a.state_dict())
    optimizer = torch.optim.AdamW(a.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05)
    ema = [p.detach().clone() for p in a.parameters()]
    update = train_step.CompiledUpdate(list(b.parameters()), 1e-2, (0.9, 0.95), 1e-8, 0.05, max_norm=0.5,
                                       compile=False)
    for _ in range(4):
        x = torch.randn(64, 16)
        for model in (a, b):
            (model(x) ** 2).mean().mul(100).backward()
        assert torch.nn.utils.clip_grad_norm_(a.parameters(), 0.5) > 0.5  # the clipping is active
        optimizer.step()
        optimizer.zero_grad()
        torch._foreach_lerp_(ema, [p.detach() for p in a.parameters()], 1 - 0.999)
        update(1e-2)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=2e-6)
    for p, q in zip(ema, update.averages):
        torch.testing.assert_close(q, p, rtol=0, atol=2e-7)
    assert update.step_count.item() == 4 and all(p.grad is None for p in b.parameters())
