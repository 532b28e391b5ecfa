"""Memory a run needs, estimated before it starts, against what the machine has: a request that cannot fit
(``per_class=10000000``, ``num_images=10**12``, a batch of a million) is refused in one line up front, instead of
failing in an allocation after minutes of work.

The estimates are lower bounds (only tensors the run cannot avoid holding at once), so a run that is refused could
not have finished; one that passes may still need more than estimated."""

from __future__ import annotations

import os

import torch
from omegaconf import ListConfig

from halton.options import Invalid
from halton.options.rules import key

FLOAT = 4  # bytes of a float32
POINTER = 8  # bytes of a list entry (a Python object reference) or an int64


def available(device: torch.device) -> tuple[int, str]:
    """Bytes free for the run on ``device`` and a description of them."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device} ({torch.cuda.get_device_name(device)})"
    try:  # what Linux can give without swapping (free + reclaimable cache)
        with open("/proc/meminfo") as meminfo:
            kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))
        return kib * 1024, "of memory available on this machine"
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of free memory on this machine"


def size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.3g} {unit}"
        count /= 1024
    raise AssertionError  # unreachable


def refuse_beyond(name: str, value, need: float, device: torch.device, what: str, allowed: str) -> None:
    """Refuse ``name=value`` when ``need`` bytes (for ``what``) exceed what ``device`` has."""
    free, where = available(device)
    if need > free:
        raise Invalid(f"{key(name)}={value} needs at least {size(need)} at once ({what}), more than the {size(free)} "
                      f"{where}; allowed: {allowed}")


def sampling_bytes(samples: int, tokens: int, hidden: int, image_values: int, guided: bool) -> int:
    """Drawing ``samples`` images in one batch: every sample's hidden states (twice with guidance), its codes and
    mask, and its decoded image (``image_values`` floats)."""
    return samples * (tokens * hidden * FLOAT * (2 if guided else 1) + tokens * 2 * POINTER + image_values * FLOAT)


def training_bytes(batch: int, tokens: int, hidden: int, depth: int, bytes_per_value: int) -> int:
    """A training step of ``batch`` samples keeps at least every block's input for the backward pass."""
    return batch * tokens * hidden * depth * bytes_per_value


def trunk_shape(net) -> tuple[int, int, int] | None:
    """(tokens, width, depth) of the transformer a config's ``model.net`` builds, or None when it does not say."""
    from halton.models.transformer import SIZES, grid_of

    hidden, depth = (SIZES[net.size][:2] if net.get("size") in SIZES else (net.get("hidden_dim"), net.get("depth")))
    if not isinstance(hidden, int) or not isinstance(depth, int) or net.get("input_size") is None:
        return None
    height, width = grid_of(net.input_size)
    return height * width // (net.get("patch_size") or 1) ** 2, hidden, depth


def image_values(cfg) -> int:
    """Floats in one decoded image: RGB at ``data.image_size``, or one grey pixel per token (the digits)."""
    from halton.models.transformer import grid_of

    side = cfg.data.get("image_size")
    height, width = grid_of(cfg.data.grid)
    return 3 * side * side if isinstance(side, int) else height * width


def run_device(cfg, entry: str) -> torch.device:
    """The device an entry point's config runs on (its own option, ``auto``: a GPU when one is visible)."""
    name = {"sample": cfg.get("device"), "evaluate": cfg.get("accelerator")}.get(entry) or cfg.trainer.accelerator
    if name in ("auto", "gpu"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def requested_rows(cfg) -> int:
    """sample.py's grid rows: the classes or prompts asked for (a prompt file counts as one, at least), else
    every class."""
    asked = (len(cfg.classes) if isinstance(cfg.get("classes"), (list, ListConfig)) else int(cfg.get("classes") is not None))
    asked += len(cfg.get("prompts") or []) + (cfg.get("prompt") is not None) + bool(cfg.get("prompt_file"))
    return asked or cfg.data.get("num_classes") or 1


def check_request(cfg, entry: str) -> None:
    """Refuse, before anything loads, a request whose tensors cannot fit where it runs: sample.py's one batch
    (``per_class`` per class or prompt), evaluate.py's batches and the features it keeps for ``num_images``,
    train.py's batch."""
    shape = trunk_shape(cfg.model.net)
    if shape is None:
        return
    tokens, hidden, depth = shape
    device = run_device(cfg, entry)
    guided = float(cfg.get("cfg_weight") or 0) > 0
    if entry == "sample":
        samples = cfg.per_class * requested_rows(cfg)
        need = sampling_bytes(samples, tokens, hidden, image_values(cfg), guided)
        refuse_beyond("per_class", cfg.per_class, need, device, f"{samples} samples drawn in one batch",
                      "fewer samples per class or prompt")
    elif entry == "evaluate":
        need = sampling_bytes(cfg.batch_size, tokens, hidden, image_values(cfg), guided)
        refuse_beyond("batch_size", cfg.batch_size, need, device, "one batch of samples", "a smaller batch_size")
        from halton.evaluation.features import extractor_class
        from halton.options.evaluation import EvaluationOptions

        chosen = list(cfg.extractor) if isinstance(cfg.extractor, ListConfig) else cfg.extractor
        names = EvaluationOptions(extractor=chosen).extractors
        steps = 1 + len(cfg.get("intermediate_steps") or [])
        values = sum(extractor_class(name).values_per_image for name in names)  # every extractor's, per image
        kept = cfg.num_images * (POINTER + values * FLOAT * steps)
        refuse_beyond("num_images", cfg.num_images, kept, torch.device("cpu"),
                      f"the conditions and {', '.join(names)} features of every image, kept for the metrics",
                      "fewer images")
    elif entry == "train":
        bytes_per_value = 2 if "16" in str(cfg.trainer.precision) else FLOAT
        need = training_bytes(cfg.data.batch_size, tokens, hidden, depth, bytes_per_value)
        refuse_beyond("data.batch_size", cfg.data.batch_size, need, device,
                      f"the {depth} blocks' inputs kept for the backward pass", "a smaller batch per device")
