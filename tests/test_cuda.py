"""On a CUDA GPU only (skipped elsewhere): the training step (bare and in Lightning) and the sampling loop never wait
for the device."""

import contextlib
import warnings

import pytest
import torch

from halton.conditions import TextKind
from halton.models import MaskTransformer
from halton.models.text_transformer import TextMaskTransformer
from halton.sampling import build_scheduler, sample
from halton.training import MaskGITModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@contextlib.contextmanager
def recording_syncs():
    """The host-device synchronisations made inside (torch's sync debug mode, as warnings): a list, filled on exit."""
    torch.cuda.synchronize()
    found = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found += [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "called a synchronizing" in str(w.message)]


def syncs(fn) -> list[str]:
    """The host-device synchronisations ``fn`` makes."""
    with recording_syncs() as found:
        fn()
    return found


@pytest.mark.parametrize("masking", ["independent", "exact", "halton"])
@pytest.mark.parametrize("kind", ["class", "text"])
def test_training_steps_never_synchronise(masking, kind):
    device = torch.device("cuda")
    if kind == "class":
        net, condition = MaskTransformer(64, 8, 64, 2, 4, 128, num_classes=10), None
        batch = {"labels": torch.randint(0, 10, (8,), device=device)}
    else:
        net = TextMaskTransformer(64, 8, c=64, hidden_dim=64, text_dim=32, depth=2, heads=4, mlp_dim=128)
        condition = TextKind(max_length=6)
        batch = {"text_emb": torch.randn(8, 6, 32, device=device).bfloat16(),
                 "text_mask": torch.arange(6, device=device) < torch.randint(1, 7, (8, 1), device=device)}
    module = MaskGITModule(net, condition=condition, masking=masking).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    batch["codes"] = torch.randint(0, 64, (8, 8, 8), device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, accuracy = module.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # first step: optimizer state, cached orders
    assert syncs(lambda: [step() for _ in range(3)]) == []


@pytest.mark.parametrize("scheduler", ["halton", "confidence", "random"])
def test_sampling_steps_never_synchronise(scheduler):
    """The per-run set-up may synchronise a fixed number of times; the steps add none: 4 and 16 steps make the
    same number of synchronisations."""
    model = MaskTransformer(64, 8, 64, 2, 4, 128, num_classes=10).cuda()
    labels = torch.arange(4, device="cuda")
    run = lambda steps: sample(model, build_scheduler(scheduler), labels, steps=steps, cfg_weight=1.0)  # noqa: E731
    run(4)
    assert len(syncs(lambda: run(4))) == len(syncs(lambda: run(16)))


def test_the_flash_kernel_serves_the_models_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = MaskTransformer(64, 16, 256, 1, 4, 512, num_classes=10).cuda()
    codes, labels = torch.randint(0, 64, (2, 16, 16), device="cuda"), torch.arange(2, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = model(codes, labels, torch.zeros(2, dtype=torch.bool, device="cuda"))  # raises if flash cannot run
    assert out.shape == (2, 256, 65) and torch.isfinite(out).all()


def test_the_ema_averages_on_the_gpu_without_synchronising():
    import lightning.pytorch as pl

    from halton.data import DigitsDataModule
    from halton.training import EMA

    module = MaskGITModule(MaskTransformer(17, 8, 32, 1, 2, num_classes=10))  # on the CPU, as train.py hands it over
    ema = EMA(decay=0.9)
    trainer = pl.Trainer(accelerator="cuda", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[ema])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    assert {p.device.type for p in ema._average_model.parameters()} == {"cuda"}
    assert syncs(lambda: ema._update(module)) == []


def test_lightnings_training_steps_never_synchronise():
    """Trainer.fit with the module's logging, the EMA and the progress bar between two refreshes: no host-device
    synchronisation (Lightning reads ``prog_bar`` values on the host after every batch; the module logs none)."""
    import lightning.pytorch as pl

    from halton.data import DigitsDataModule
    from halton.training import EMA, StepProgressBar

    class Watch(pl.Callback):
        """Records the synchronisations from the start of batch 2 to the start of batch 6."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:
                self.recording = recording_syncs()
                self.found = self.recording.__enter__()
            elif batch_idx == 6:
                self.recording.__exit__(None, None, None)

    watch = Watch()
    trainer = pl.Trainer(accelerator="cuda", devices=1, max_steps=8, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, precision="bf16-mixed", gradient_clip_val=1.0,
                         callbacks=[EMA(decay=0.9), StepProgressBar(refresh_rate=100), watch])
    try:
        trainer.fit(MaskGITModule(MaskTransformer(17, 8, 32, 1, 2, num_classes=10)),
                    datamodule=DigitsDataModule(batch_size=16))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert watch.found == []
