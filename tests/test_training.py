import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from halton.data import DigitsDataModule
from halton.models import MaskTransformer
from halton.training import EMA, AtomicCheckpointIO, MaskGITModule, StepProgressBar


def tiny_module(**kwargs):
    net = MaskTransformer(17, 8, 32, 1, 2, num_classes=10)
    options = dict(lr=1e-3, warmup_steps=2, total_steps=10, weight_decay=0.0)
    options.update(kwargs)
    return MaskGITModule(net, **options)


def test_mask_codes_masks_at_least_one_token_with_the_arccos_ratio():
    torch.manual_seed(0)
    module = tiny_module()
    mask, weights = module.mask_codes(torch.zeros(4000, 8, 8, dtype=torch.long))
    assert weights is None
    assert mask.any(dim=1).all()
    assert abs(mask.float().mean().item() - 2 / math.pi) < 0.02  # E[arccos(u) / (pi / 2)] = 2 / pi


@pytest.mark.parametrize("loss_on", ["masked", "all"])
def test_loss_is_cross_entropy_on_the_scored_tokens(loss_on, monkeypatch):
    torch.manual_seed(0)
    module = tiny_module(loss_on=loss_on, label_dropout=0.0)
    codes = torch.randint(0, 17, (3, 8, 8))
    labels = torch.tensor([1, 2, 3])
    mask = torch.rand(3, 64) < 0.5
    monkeypatch.setattr(module, "mask_codes", lambda c: (mask, None))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    loss = module._step({"codes": codes, "labels": labels}, "train")
    logits = module.model(codes.flatten(1).masked_fill(mask, 17), labels, torch.zeros(3, dtype=torch.bool))
    scored = mask if loss_on == "masked" else torch.ones_like(mask)
    torch.testing.assert_close(loss, F.cross_entropy(logits[scored], codes.flatten(1)[scored]))


def test_bad_options():
    with pytest.raises(ValueError, match="loss_on='some' is not one of the choices; allowed: masked, all"):
        tiny_module(loss_on="some")
    with pytest.raises(ValueError, match="mask_schedule='exp2' is not one of the choices"):
        tiny_module(mask_schedule="exp2")


def test_warmup_then_cosine():
    module = tiny_module(lr=1.0, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:5] == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0])
    expected_cosine = [0.1 + 0.9 * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(8)]
    assert rates[4:] == pytest.approx(expected_cosine)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.96)


def _trainer(tmp_path, max_steps, ema=EMA):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3, save_top_k=-1)
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                      callbacks=[checkpoint, ema(decay=0.9)], plugins=[AtomicCheckpointIO()])


def _fit(tmp_path, max_steps, ema, ckpt_path=None):
    pl.seed_everything(0)
    module = tiny_module()
    trainer = _trainer(tmp_path, max_steps, ema)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
    return torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)


def test_fused_ema_matches_lightnings_and_resumes_its_checkpoints(tmp_path):
    """halton.training.EMA (one foreach lerp, no host sync) averages as Lightning's EMAWeightAveraging does, under the
    same checkpoint keys, so a run started with either resumes with the other."""
    ours = _fit(tmp_path / "ours", 6, EMA)
    lightnings = _fit(tmp_path / "lightning", 6, EMAWeightAveraging)
    assert ours["callbacks"].keys() == lightnings["callbacks"].keys()
    assert ours["callbacks"]["EMAWeightAveraging"] == {"latest_update_step": 6}
    assert int(ours["averaging_state"]["n_averaged"]) == int(lightnings["averaging_state"]["n_averaged"]) == 6
    for key in ("state_dict", "current_model_state"):
        assert ours[key].keys() == lightnings[key].keys()
        for name, value in ours[key].items():
            torch.testing.assert_close(value, lightnings[key][name], rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours["state_dict"]["model.tok_emb.weight"],
                           ours["current_model_state"]["model.tok_emb.weight"])
    # Lightning's checkpoint resumed for 3 more steps by ours and by Lightning's callback: the same averages.
    lightnings_last = tmp_path / "lightning" / "ckpt" / "last.ckpt"
    resumed = {ema: _fit(tmp_path / ema.__name__, 9, ema, ckpt_path=str(lightnings_last))
               for ema in (EMA, EMAWeightAveraging)}
    assert int(resumed[EMA]["averaging_state"]["n_averaged"]) == 9
    for name, value in resumed[EMAWeightAveraging]["state_dict"].items():
        torch.testing.assert_close(resumed[EMA]["state_dict"][name], value, rtol=1e-5, atol=1e-6)


def test_training_checkpoint_and_resume(tmp_path):
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=16)
    module = tiny_module()
    trainer = _trainer(tmp_path, 6)
    trainer.fit(module, datamodule=data)
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)  # plain containers only
    assert state["global_step"] == 6
    assert "current_model_state" in state and "averaging_state" in state  # EMA weights + live weights
    ema, live = state["state_dict"], state["current_model_state"]
    assert not torch.equal(ema["model.tok_emb.weight"], live["model.tok_emb.weight"])

    resumed_module = tiny_module()
    resumed = _trainer(tmp_path, 9)
    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
            seen["exp_avg"] = next(iter(trainer.optimizers[0].state.values()))["exp_avg"].clone()
            seen["weights"] = pl_module.model.tok_emb.weight.detach().clone()
            ema_callback = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
            seen["ema"] = ema_callback._average_model.module.model.tok_emb.weight.detach().clone()

    resumed.callbacks.append(Probe())
    resumed.fit(resumed_module, datamodule=data, ckpt_path=str(last))
    assert seen["step"] == 6 and resumed.global_step == 9
    torch.testing.assert_close(seen["weights"], live["model.tok_emb.weight"])
    torch.testing.assert_close(seen["ema"], ema["model.tok_emb.weight"])
    saved_exp_avg = next(iter(state["optimizer_states"][0]["state"].values()))["exp_avg"]
    torch.testing.assert_close(seen["exp_avg"], saved_exp_avg)
    # LR: warmup 2 steps then cosine over 8; after 6 steps it is at cosine position 4 of 8.
    assert seen["lr"] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 4 / 8)) / 2)


def test_training_reads_tensors_on_the_host_only_when_the_bar_or_the_logger_updates(tmp_path, monkeypatch):
    """Each host read of a tensor (.item(), bool(), ...) is a host-device synchronisation on a GPU. With the
    training config's callbacks, a fit reads tensors only at the steps where the progress bar refreshes and the
    logger writes (every 4th here), and once for the EMA; not after every batch, as Lightning does for ``prog_bar``
    values. The bar still shows the training loss."""
    import traceback

    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    config = OmegaConf.create({"paths": {"runs_dir": str(tmp_path)}, "name": "run",
                               "callbacks": OmegaConf.load("conf/callbacks/default.yaml")})
    config.callbacks.progress_bar.refresh_rate = 4
    config.callbacks.model_checkpoint.every_n_train_steps = 4
    callbacks = [instantiate(c) for c in config.callbacks.values()]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=12, log_every_n_steps=4, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=CSVLogger(tmp_path), callbacks=callbacks)
    read_at_steps = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            # torch's own CPU optimizer reads its step counts; a fused AdamW on a GPU does not
            if trainer.training and not any("torch/optim/" in f.filename for f in traceback.extract_stack()):
                read_at_steps.append(trainer.global_step)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    pl.seed_everything(0)
    trainer.fit(tiny_module(total_steps=12), datamodule=DigitsDataModule(batch_size=16))
    monkeypatch.undo()
    assert trainer.global_step == 12
    # the EMA reads once, after the first step (whether it has averaged before: then a host flag)
    assert [step for step in read_at_steps if step > 1 and step % 4] == []
    assert {4, 8, 12} <= set(read_at_steps)
    bar = next(c for c in callbacks if isinstance(c, StepProgressBar))
    assert "train/loss=" in bar.train_progress_bar.postfix
