"""Lightning training of MaskGIT transformers."""

from halton.training.checkpoint_io import AtomicCheckpointIO
from halton.training.ema import EMA
from halton.training.module import MaskGITModule
from halton.training.preemption import PreemptionCheckpoint, cluster_plugins
from halton.training.progress import StepProgressBar
from halton.training.resumable_loader import ResumableLoader
from halton.training.rng_state import RNGStateCheckpoint
from halton.training.throughput import Throughput

__all__ = ["EMA", "AtomicCheckpointIO", "MaskGITModule", "PreemptionCheckpoint", "RNGStateCheckpoint",
           "ResumableLoader", "StepProgressBar", "Throughput", "cluster_plugins"]
