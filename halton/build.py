"""What sample.py, evaluate.py and the app draw with, built from a composed config in one place: the scheduler, the
kind of condition, the model from its checkpoint (:mod:`halton.models.loading`: any kind) and the tokenizer that
decodes its codes. Beside the entry points rather than in :mod:`halton.models`: the tokenizer comes with the data
config (``instantiate(cfg.data).tokenizer``), and ``models`` never reaches into ``data``. Imports no torch until
something is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


def condition_kind(cfg: DictConfig):
    """The model config's kind of condition (``model.condition``; class labels when it names none)."""
    from hydra.utils import instantiate

    from halton.conditions import ClassKind

    node = OmegaConf.select(cfg, "model.condition")
    return instantiate(node) if node is not None else ClassKind()


@dataclass
class Built:
    """The parts of a sampling run. ``scheduler`` and ``kind`` are built at once (cheap: enough to name a run);
    ``net``, ``tokenizer`` and ``data`` (the data module they come from: the digits' classifier reads samples back)
    by :meth:`load`."""

    cfg: DictConfig
    scheduler: Any
    kind: Any
    net: Any = None
    tokenizer: Any = None
    data: Any = None

    def load(self, device) -> Built:
        """Load the model (checked against the condition kind: a text model's encoder loads now, not at the first
        prompt) and the tokenizer onto ``device``, in eval mode."""
        from hydra.utils import instantiate

        from halton.models.loading import load_model

        cfg = self.cfg
        self.data = instantiate(cfg.data)
        self.net = load_model(cfg.checkpoint, cfg.model.net, OmegaConf.select(cfg, "official_heads")).to(device)
        self.kind.check_model(self.net)
        self.tokenizer = self.data.tokenizer.to(device).eval()
        return self


def build_from_config(cfg: DictConfig, device=None) -> Built:
    """The scheduler (with the command line's options, ``scheduler.r_temp=3``...) and the condition kind of ``cfg``;
    with ``device``, also the model and tokenizer loaded there (:meth:`Built.load`)."""
    from hydra.utils import instantiate

    built = Built(cfg, instantiate(cfg.scheduler), condition_kind(cfg))
    return built if device is None else built.load(device)
