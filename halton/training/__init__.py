"""Lightning training of MaskGIT transformers."""

from halton.training.checkpoint_io import AtomicCheckpointIO
from halton.training.module import MaskGITModule

__all__ = ["AtomicCheckpointIO", "MaskGITModule"]
