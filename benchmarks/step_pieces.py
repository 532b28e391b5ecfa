"""The pieces of the XL training step timed alone, at its real shapes: what each speed lever can gain at most.

    python benchmarks/step_pieces.py                       # on a GPU: batch 32, the xl model (1152 wide, 257 tokens)
    python benchmarks/step_pieces.py --device cpu --batch 2 --width 64 --heads 4 --hidden 128 --classes 64   # dry run

Each row is the median of ``--repeats`` timed calls after warm-ups (CUDA events through the host clock with the
device synchronised), forward and backward where training runs both:

- attention: SDPA forward + backward at [B, 16 heads, 257, 72] with each kernel (flash, cuDNN, memory-efficient);
- projections: q, k, v as three matmuls of width D or one of 3D; w1, w3 as two of the SwiGLU width or one of twice;
- FP8: one [B*257, D] x [D, 3072] product in bf16 and as ``torch._scaled_mm`` on float8 (e4m3) operands with
  per-tensor scales (the upper bound of torchao's Float8Linear, which adds the scaling passes);
- loss head: logits [B, 1024, 16448] from the hidden states, fp32 cross-entropy and argmax, forward + backward,
  eager and compiled;
- optimizer: fused AdamW, gradient clipping (foreach norm and scale) and the EMA lerp over the model's parameter
  count in fp32 (memory-bound: bytes moved / bandwidth).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def timed(fn, device, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=3072, help="the SwiGLU hidden width")
    parser.add_argument("--tokens", type=int, default=257, help="sequence: 16x16 patches + 1 register")
    parser.add_argument("--positions", type=int, default=1024, help="head positions: 32x32 codes")
    parser.add_argument("--classes", type=int, default=16448, help="codebook + mask token, padded to 64")
    parser.add_argument("--params", type=float, default=703.6e6, help="parameters the optimizer updates")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows: dict[str, float | str] = {}

    def row(name, fn):
        try:
            rows[name] = timed(fn, device, args.repeats)
            print(f"{name:<58} {rows[name]:9.3f} ms")
        except Exception as error:  # a kernel this device lacks: recorded, the others still run
            rows[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print(f"{name:<58} failed: {rows[name]}")

    b, d, n, h = args.batch, args.width, args.tokens, args.heads
    m = b * n
    rand = lambda *shape, grad=False: torch.randn(*shape, device=device, dtype=dtype, requires_grad=grad)  # noqa: E731

    # attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (rand(b, h, n, d // h, grad=True) for _ in range(3))
    out_grad = rand(b, h, n, d // h)
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)):
        def attention(backend=backend):
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v).backward(out_grad)
        row(f"attention fwd+bwd, {name}", attention)

    # projections (forward + backward of the matmuls)
    x = rand(m, d, grad=True)
    wq, wk, wv = (rand(d, d, grad=True) for _ in range(3))
    w1, w3 = (rand(args.hidden, d, grad=True) for _ in range(2))

    def separate(weights):
        outs = [x @ w.t() for w in weights]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    def fused(weights):
        out = x @ torch.cat(weights).t()
        out.backward(torch.ones_like(out))

    row("q, k, v: three matmuls, fwd+bwd", lambda: separate((wq, wk, wv)))
    row("q, k, v: one matmul (fused), fwd+bwd", lambda: fused((wq, wk, wv)))
    row("w1, w3: two matmuls, fwd+bwd", lambda: separate((w1, w3)))
    row("w1, w3: one matmul (fused), fwd+bwd", lambda: fused((w1, w3)))

    # FP8 upper bound: one forward product
    a16, b16 = rand(m, d), rand(args.hidden, d)
    row("[B*257, D] x [D, hidden] bf16", lambda: a16 @ b16.t())
    if device.type == "cuda":
        a8, b8 = a16.to(torch.float8_e4m3fn), b16.to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        row("[B*257, D] x [D, hidden] fp8 (torch._scaled_mm)",
            lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))

    # loss head
    from halton.training.module import masked_token_loss

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(args.classes, d, device=device) * 0.02)
            self.bias = torch.nn.Parameter(torch.zeros(args.classes, device=device))

        def training_logits(self, hidden):
            return F.linear(hidden, self.weight.to(hidden.dtype), self.bias.to(hidden.dtype))

    head = Head()
    hidden = rand(b, args.positions, d, grad=True)
    targets = torch.randint(0, args.classes - 64, (b, args.positions), device=device)
    mask = torch.rand(b, args.positions, device=device) < 0.64
    compiled = torch.compile(masked_token_loss, dynamic=False)
    for name, fn in (("eager", masked_token_loss), ("compiled", compiled)):
        row(f"loss head fwd+bwd ({args.classes} classes), {name}",
            lambda fn=fn: fn(head, hidden, targets, mask, mask, mask.float())[0].backward())

    # optimizer, clipping, EMA over the parameter count (fp32), as 28 x 12 tensors
    count = 28 * 12
    numel = int(args.params) // count
    params = [torch.zeros(numel, device=device, requires_grad=True) for _ in range(count)]
    for p in params:
        p.grad = torch.randn_like(p)
    fused_ok = device.type == "cuda"
    adamw = torch.optim.AdamW(params, lr=1e-4, fused=fused_ok or None)
    adamw.step()
    ema = [p.detach().clone() for p in params]
    row("AdamW step (fused on CUDA)", adamw.step)
    row("clip_grad_norm_ (foreach)", lambda: torch.nn.utils.clip_grad_norm_(params, 1.0))
    row("EMA lerp (foreach)", lambda: torch._foreach_lerp_(ema, [p.detach() for p in params], 0.001))
    row("bf16 copy of the weights (autocast's casts)", lambda: [p.detach().to(torch.bfloat16) for p in params])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
