"""Lightning training of MaskGIT transformers."""

from halton.data.reading.resumable_loader import ResumableLoader  # public here too: halton.training.ResumableLoader
from halton.training.checkpoint_io import AtomicCheckpointIO
from halton.training.divergence import Diverged, DivergenceGuard
from halton.training.ema import EMA
from halton.training.module import MaskGITModule
from halton.training.preemption import PreemptionCheckpoint, cluster_plugins
from halton.training.progress import StepProgressBar
from halton.training.rng_state import RNGStateCheckpoint
from halton.training.summary import ParameterSummary
from halton.training.throughput import Throughput

__all__ = ["EMA", "AtomicCheckpointIO", "Diverged", "DivergenceGuard", "MaskGITModule", "ParameterSummary",
           "PreemptionCheckpoint", "RNGStateCheckpoint", "ResumableLoader", "StepProgressBar", "Throughput", "cluster_plugins"]
