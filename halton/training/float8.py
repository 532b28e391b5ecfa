"""FP8 matmuls for training (``model.fp8=true``): the transformer blocks' projections as torchao's ``Float8Linear``
(dynamic per-tensor scaling, bf16 outside the matmuls; on GPUs with FP8 tensor cores, compute capability >= 8.9).

Only the blocks' attention and feed-forward projections are converted: they are the model's FLOPs. The AdaLN
modulation runs on one vector per image (a matrix of batch-size rows, nothing for FP8 to gain), and the embeddings
and the head stay in bf16. Parameters keep their names and fp32 master values, so checkpoints, the EMA and
sampling are unchanged."""

from __future__ import annotations

from torch import nn

MIN_CAPABILITY = (8, 9)  # Ada and Hopper: FP8 tensor cores


def convert_blocks_to_float8(model: nn.Module) -> None:
    """Swap the blocks' projection layers for ``Float8Linear`` in place."""
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise ValueError("model.fp8=true needs torchao; allowed: pip install 'halton[fp8]', or model.fp8=false") \
            from None

    def projection(module: nn.Module, name: str) -> bool:
        # FP8 matmuls need both sizes divisible by 16; ".mlp." is the AdaLN modulation
        return (isinstance(module, nn.Linear) and ".mlp." not in f".{name}."
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    convert_to_float8_training(model.transformer.layers, module_filter_fn=projection)


def check_float8_device(device) -> None:
    """One line when the training device has no FP8 tensor cores."""
    import torch

    if device.type != "cuda" or torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        capability = ".".join(map(str, MIN_CAPABILITY))
        raise ValueError(f"model.fp8=true needs a GPU with FP8 tensor cores (compute capability >= {capability}), "
                         f"not {name}; allowed: model.fp8=false")
