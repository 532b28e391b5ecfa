"""FID (the Frechet distance of any feature space), Inception Score, precision and recall from features, through
torch-fidelity's own functions."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

PRC_NEIGHBORHOOD = 3  # k of Kynkaanniemi et al. (2019)


def feature_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """mu and sigma of features [N, D] (float64, as torch-fidelity computes them)."""
    return fid_features_to_statistics(features.double().cpu())


def fid(generated_stats: dict[str, np.ndarray], reference_stats: dict[str, np.ndarray]) -> float:
    return fid_statistics_to_metric(generated_stats, reference_stats, verbose=False)["frechet_inception_distance"]


def inception_score(logits: torch.Tensor, splits: int = 10) -> float:
    splits = max(1, min(splits, logits.shape[0]))
    return isc_features_to_metric(logits.cpu(), splits=splits)["inception_score_mean"]


def precision_recall(generated: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    result = prc_features_to_metric(generated.float().cpu(), reference.float().cpu(),
                                    prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=10000, save_cpu_ram=False,
                                    verbose=False)
    return result["precision"], result["recall"]


def generative_metrics(features: torch.Tensor, logits: torch.Tensor | None, reference, prefix: str = "",
                       distance: str = "fid") -> dict[str, float]:
    """The Frechet distance against ``reference`` (a ReferenceStats), named ``distance`` (``fid`` in Inception-like
    features, ``fd`` in others), IS of ``logits`` (none without logits), and precision/recall against the reference
    features when the reference carries them (NaN otherwise); every name starts with ``prefix``."""
    metrics = {distance: fid(feature_statistics(features), reference.stats)}
    if logits is not None:
        metrics["is"] = inception_score(logits)
    if reference.features is not None:
        metrics["precision"], metrics["recall"] = precision_recall(features, reference.features)
    else:
        metrics["precision"] = metrics["recall"] = math.nan
    return {prefix + name: float(value) for name, value in metrics.items()}
