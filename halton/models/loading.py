"""Every kind of model checkpoint, told apart once, checked against a config and loaded:

- a train.py checkpoint (Lightning's ``.ckpt``: a ``state_dict`` with ``model.*`` entries, the EMA weights when EMA
  was on), built from the config's ``model.net``;
- a released Halton-MaskGIT ``.pth`` (``model_state_dict``), whose sizes are read from its tensors and whose heads
  are given (``official_heads``);
- a folder in the Hugging Face format (``config.json`` and ``model.safetensors``, written by ``save_pretrained`` or
  ``python -m halton.export``), or the same on the hub, ``hf://owner/repo``: built from its own config.

Files may be named ``hf://owner/repo/file``. Checkpoints are read with ``torch.load(weights_only=True)``, folders
with safetensors: loading never runs pickled code. Importing this module imports no torch (the pre-flight checks
classify paths with it); the functions that read weights import it."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halton.utils.hub import MODEL_CONFIG, MODEL_WEIGHTS, hub_file, hub_parts, is_hub_path, offline, parse

TRAIN_HINT = "; train.py writes runs/<name>/checkpoints/last.ckpt, or pass checkpoint=PATH"


class Kind(enum.Enum):
    TRAINED = "a train.py checkpoint"
    RELEASED = "a released Halton-MaskGIT checkpoint"
    FOLDER = "a model folder in the Hugging Face format"
    HUB = "a model in the Hugging Face format on the hub"


def kind_of_path(path) -> Kind | None:
    """The kind a checkpoint's name alone tells: a local folder with config.json, or ``hf://owner/repo`` (a
    repository rather than a file in it); None for a file (its contents tell train.py from released)."""
    if is_hub_path(path):
        parts = hub_parts(path)
        return Kind.HUB if parts is not None and parts.filename is None else None
    if path is not None and (Path(str(path)).expanduser() / MODEL_CONFIG).is_file():
        return Kind.FOLDER
    return None


def is_model_folder(path) -> bool:
    """Whether ``path`` names a model in the Hugging Face format (a local folder or ``hf://owner/repo``)."""
    return kind_of_path(path) is not None


def kind_of_state(state, path) -> Kind:
    """The kind of a checkpoint file as read: train.py's (``state_dict``) or a released one (``model_state_dict``),
    or a one-line ValueError."""
    if isinstance(state, dict) and "model_state_dict" in state:
        return Kind.RELEASED
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        return Kind.TRAINED
    raise ValueError(f"checkpoint {path} is neither a train.py checkpoint (state_dict) nor a released Halton-MaskGIT "
                     "one (model_state_dict)")


@dataclass
class Checkpoint:
    """A checkpoint as read once: its kind, and what the kind holds (``state``, the file's dict, for train.py and
    released checkpoints; ``config``, the constructor's arguments, for Hugging Face format models, whose weights are
    read when the model is loaded)."""

    path: str
    kind: Kind
    state: dict | None = None
    config: dict | None = None

    @classmethod
    def of(cls, state, path) -> Checkpoint:
        """A checkpoint file's dict, read already, classified."""
        return cls(str(path), kind_of_state(state, path), state=state)

    def shapes(self) -> dict:
        """The token grid, codebook and classes or text width of a checkpoint that carries its own model shapes
        (released, Hugging Face format); ``{}`` for a train.py checkpoint, whose shapes are the config's."""
        from halton.models.transformer import grid_of  # torch: the state is read already

        if self.config is not None:
            height, width = grid_of(self.config.get("input_size", 16))
            found = {"grid tokens": height * width, "codebook_size": self.config["codebook_size"]}
            if "text_dim" in self.config:
                return found | {"text width": self.config["text_dim"]}
            return found | {"num_classes": self.config.get("num_classes", 1000)}
        if self.kind is not Kind.RELEASED:
            return {}
        from halton.models.official import strip_prefixes

        weights = strip_prefixes(self.state["model_state_dict"])
        found = {"grid tokens": weights["pos_emb.weight"].shape[0],
                 "codebook_size": weights["tok_emb.weight"].shape[0] - 1}
        if "transformer.layers.0.cross_attn.mha.in_proj_weight" in weights:  # the text-to-image format
            return found | {"text width": weights["transformer.layers.0.mlp.0.weight"].shape[1]}
        return found | {"num_classes": weights["cls_emb.weight"].shape[0] - 1}


def pretrained_config(path: str) -> dict:
    """The config.json of a folder or of ``hf://owner/repo[@revision]``, or a one-line error."""
    file = hub_file(str(parse(path.rstrip("/")).file(MODEL_CONFIG)), "model config") if is_hub_path(path) \
        else Path(path).expanduser() / MODEL_CONFIG
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{file} is not a readable model config: {error}") from None
    if not isinstance(config, dict) or "codebook_size" not in config:
        raise ValueError(f"{file} is not the config of a halton model (no codebook_size)")
    return config


def read(path, what: str = "checkpoint") -> Checkpoint:
    """Read and classify a checkpoint once: a Hugging Face format model's config, or a checkpoint file's dict
    (weights only); a one-line ValueError or FileNotFoundError (naming ``what``) for anything else."""
    kind = kind_of_path(path)
    if kind is not None:
        return Checkpoint(str(path), kind, config=pretrained_config(str(path)))
    from halton.utils.checkpoint import read_checkpoint

    return Checkpoint.of(read_checkpoint(path, what, TRAIN_HINT if what == "checkpoint" else ""), path)


def model_weights(state: dict) -> dict:
    """The transformer's weights in a train.py checkpoint: the ``model.`` entries of its ``state_dict`` (the EMA
    weights when EMA was on), without the DDP and torch.compile prefixes."""
    from halton.models.official import strip_prefixes

    state_dict = strip_prefixes(state["state_dict"])
    return strip_prefixes({k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")})


def weights_digest(path, cache_file: Path | None = None) -> str:
    """A digest of the weights a checkpoint's model is loaded with (a train.py checkpoint's model entries, a released
    checkpoint's model_state_dict, a Hugging Face format model's model.safetensors): a retrained ``last.ckpt`` gets
    a new digest, the same weights under another path the same one. Remembered in ``cache_file`` (JSON) by the
    file's path, size and modification time, so each version of a file is hashed once."""
    import hashlib

    import torch

    from halton.utils.files import atomic_write

    checkpoint = str(path)
    file = Path(checkpoint).expanduser()
    if kind_of_path(checkpoint) is not None:  # a model folder: its weights file
        file = hub_file(str(parse(checkpoint.rstrip("/")).file(MODEL_WEIGHTS)), "model weights") \
            if is_hub_path(checkpoint) else file / MODEL_WEIGHTS
    elif is_hub_path(checkpoint):
        file = hub_file(checkpoint)
    stat = file.stat()
    version = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    known = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            known = json.loads(Path(cache_file).read_text())
        except ValueError:  # a damaged cache is rebuilt
            known = {}
    entry = known.get(str(file.resolve()), {})
    if {k: entry.get(k) for k in version} == version and isinstance(entry.get("digest"), str):
        return entry["digest"]
    digest = hashlib.sha256()
    if file.name == MODEL_WEIGHTS:
        with open(file, "rb") as weights:
            for block in iter(lambda: weights.read(1 << 24), b""):
                digest.update(block)
    else:
        checkpoint_read = read(checkpoint)
        state = checkpoint_read.state
        weights = state["model_state_dict"] if checkpoint_read.kind is Kind.RELEASED else model_weights(state)
        for name in sorted(weights):
            tensor = weights[name].detach().reshape(-1).contiguous()
            digest.update(f"{name} {tensor.dtype} {tuple(weights[name].shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    known[str(file.resolve())] = {**version, "digest": digest.hexdigest()[:16]}
    if cache_file is not None:
        atomic_write(cache_file, lambda tmp: Path(tmp).write_text(json.dumps(known, indent=1)))
    return known[str(file.resolve())]["digest"]


def _need_heads(checkpoint: Checkpoint, official_heads) -> None:
    if checkpoint.kind is Kind.RELEASED and not official_heads:
        raise ValueError(f"checkpoint {checkpoint.path} is a released Halton-MaskGIT checkpoint; give its heads with "
                         "official_heads=N (tiny 6, small 6, base 12, large 16; text-to-image 16)")


def check_fits(checkpoint: Checkpoint, cfg) -> None:
    """A one-line ValueError unless the checkpoint fits the composed config ``cfg``: a train.py checkpoint's weights
    have the shapes of ``cfg.model.net`` (compared on the meta device: nothing is allocated); a released checkpoint
    or Hugging Face format model (which carry their own shapes) has the token grid, codebook and classes or text
    width of ``cfg.data``, and a released one its heads (``official_heads``)."""
    from omegaconf import OmegaConf

    found = checkpoint.shapes()
    if found:
        wanted = {"grid tokens": cfg.data.grid[0] * cfg.data.grid[1], "codebook_size": cfg.data.codebook_size}
        wanted |= {key: OmegaConf.select(cfg, option) for key, option in
                   (("text width", "data.text_dim"), ("num_classes", "data.num_classes")) if key in found}
        if found != wanted:
            raise ValueError(f"checkpoint {checkpoint.path} is of another configuration: it has {found}, the "
                             f"experiment's data config {wanted}")
        _need_heads(checkpoint, OmegaConf.select(cfg, "official_heads"))
        return
    import torch
    from hydra.utils import instantiate

    weights = model_weights(checkpoint.state)
    if not weights:
        raise ValueError(f"checkpoint {checkpoint.path} holds no model weights (no model.* entries in its state_dict)")
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    differs = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if differs:
        key = differs[0]
        raise ValueError(f"checkpoint {checkpoint.path} is of another configuration: {key} is {list(found[key])} "
                         f"there, {list(expected[key])} in this model config ({len(differs)} weights differ)")
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"checkpoint {checkpoint.path} is of another configuration: {len(missing)} weights of this "
                         f"model config missing there{f' (e.g. {missing[0]})' if missing else ''}, {len(extra)} "
                         f"unknown{f' (e.g. {extra[0]})' if extra else ''}")


def refuse_non_finite(net, path):
    """``net``, or a one-line ValueError naming the checkpoint and the share of its weights that are NaN or infinite
    (written by a training run that diverged). Checked once, when a checkpoint is loaded: one fused norm."""
    from halton.utils.checkpoint import count_non_finite

    bad, total = count_non_finite(net.parameters())
    if bad:
        raise ValueError(f"checkpoint {path} holds non-finite weights: {bad:,} of its {total:,} weights "
                         f"({bad / total:.2%}) are NaN or infinite, written by a training run that diverged; use a "
                         "checkpoint from before the divergence")
    return net


def load_pretrained(path: str, map_location: Any = "cpu"):
    """A class or text model saved with ``save_pretrained``: a local folder, or ``hf://owner/repo`` on the hub
    (fetched into its cache; ``HF_HUB_OFFLINE=1`` reads the cache only). The kind comes from config.json."""
    from halton.models.text_transformer import TextMaskTransformer
    from halton.models.transformer import MaskTransformer

    model_class = TextMaskTransformer if "text_dim" in pretrained_config(path) else MaskTransformer
    source = str(Path(path).expanduser())
    if is_hub_path(path):  # the repository's snapshot at its revision: config.json and the weights, fetched
        name = parse(path.rstrip("/"))
        source = str(hub_file(str(name.file(MODEL_WEIGHTS)), "model weights").parent)
    return refuse_non_finite(model_class.from_pretrained(source, local_files_only=offline(),
                                                         map_location=str(map_location)), path)


def load_model(checkpoint, net_config=None, official_heads: int | None = None):
    """The transformer a checkpoint holds (a path, or a :class:`Checkpoint` already read), in eval mode: a train.py
    checkpoint's weights in a model built from ``net_config`` (a Hydra node), a released one with
    ``official_heads`` heads, a Hugging Face format model from its own config."""
    checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else read(checkpoint)
    if checkpoint.kind in (Kind.FOLDER, Kind.HUB):
        return load_pretrained(checkpoint.path)
    _need_heads(checkpoint, official_heads)
    if checkpoint.kind is Kind.RELEASED:
        from halton.models.official import from_official_state

        return refuse_non_finite(from_official_state(checkpoint.state, official_heads, checkpoint.path),
                                 checkpoint.path)
    from hydra.utils import instantiate

    net = instantiate(net_config)
    try:
        net.load_state_dict(model_weights(checkpoint.state))
    except RuntimeError as error:
        detail = str(error).splitlines()
        raise ValueError(f"checkpoint {checkpoint.path} does not fit the model config: "
                         f"{' '.join(d.strip() for d in detail[1:3])}") from None
    return refuse_non_finite(net, checkpoint.path).eval()
