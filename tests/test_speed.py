"""The speed levers of training (compiled loss head, FP8 layers) compute what the plain code
computes, and the throughput callback logs images/s and the FLOPs per image from the run itself."""

import csv
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from halton.data import DigitsDataModule
from halton.models import MaskTransformer, build_transformer
from halton.training import MaskGITModule, Throughput
from halton.training.module import masked_token_loss
from halton.training.throughput import scored_share, training_flops_per_image


def small_model():
    torch.manual_seed(0)
    model = MaskTransformer(17, 8, 32, 2, 2, num_classes=10)
    for block in model.transformer.layers:  # AdaLN-zero starts as the identity: give the blocks some effect
        nn.init.normal_(block.mlp[1].weight, std=0.2)
    return model


def test_compiled_loss_head_equals_the_eager_one():
    model = small_model()
    hidden = torch.randn(2, 64, 32, requires_grad=True)
    targets = torch.randint(0, 17, (2, 64))
    mask = torch.rand(2, 64) < 0.5
    eager_loss, eager_correct = masked_token_loss(model, hidden, targets, mask, mask, mask.float())
    eager_grad, = torch.autograd.grad(eager_loss, hidden)
    loss, correct = torch.compile(masked_token_loss, dynamic=False)(model, hidden, targets, mask, mask, mask.float())
    grad, = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(grad, eager_grad)
    assert int(correct) == int(eager_correct)


def test_flops_per_image_of_the_xl_model_and_the_scored_share():
    module = MaskGITModule(build_transformer("xl", 16384, 32, 1000, registers=1, patch_size=2).to("meta"))
    model_flops, executed = training_flops_per_image(module)
    # the head (1152 -> 16385 at 1,024 positions, forward + backward) counted on 2/pi of the positions
    head = 3 * 2 * 1024 * 1152 * 16385
    assert math.isclose(executed - model_flops, head * (1 - 2 / math.pi), rel_tol=1e-6)
    assert 800e9 < model_flops < 810e9 and 845e9 < executed < 850e9
    assert math.isclose(scored_share(MaskGITModule(small_model(), mask_schedule="linear")), 0.5, rel_tol=1e-9)
    assert scored_share(MaskGITModule(small_model(), loss_on="all")) == 1.0


def test_throughput_callback_logs_images_per_second_and_flops(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = MaskGITModule(small_model(), lr=1e-3, warmup_steps=2, total_steps=12)
    throughput = Throughput(peak_tflops=1.0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=12, log_every_n_steps=4, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         logger=CSVLogger(tmp_path), callbacks=[throughput])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    rows = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("perf/images_per_s")]
    assert [int(r["step"]) for r in rows] == [7, 11]  # steps 8 and 12: the first interval starts at step 4
    flops = training_flops_per_image(module)[0]
    for row in rows:
        assert float(row["perf/images_per_s"]) > 0
        assert math.isclose(float(row["perf/gflop_per_image"]), flops / 1e9, rel_tol=1e-6)
        assert math.isclose(float(row["perf/mfu"]), flops * float(row["perf/images_per_s"]) / 1e12, rel_tol=1e-5)


def test_fp8_converts_the_block_projections_only_and_needs_an_fp8_gpu():
    pytest.importorskip("torchao")
    from torchao.float8.float8_linear import Float8Linear

    net = MaskTransformer(17, 8, 32, 2, 2, num_classes=10)
    keys = list(net.state_dict())
    module = MaskGITModule(net, fp8=True)
    converted = [n for n, m in module.model.named_modules() if isinstance(m, Float8Linear)]
    assert len(converted) == 2 * 7 and not any(".mlp." in n for n in converted)  # q k v o, w1 w2 w3 per block
    assert list(module.model.state_dict()) == keys  # checkpoints keep their keys
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"^model.fp8=true needs a GPU with FP8 tensor cores .*; allowed: "
                                         r"model.fp8=false$"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
