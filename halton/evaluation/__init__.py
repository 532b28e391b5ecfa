"""Evaluation: feature extractors, reference statistics, FID/FD-DINOv2/IS/precision/recall, results files and
reports."""

from halton.evaluation.features import DigitsFeatures, DinoV2Features, FeatureExtractor, InceptionFeatures
from halton.evaluation.metrics import fid, generative_metrics, inception_score, precision_recall
from halton.evaluation.reference import ReferenceStats, reference_statistics
from halton.evaluation.results import ResultsFile

__all__ = ["DigitsFeatures", "DinoV2Features", "FeatureExtractor", "InceptionFeatures", "ReferenceStats",
           "ResultsFile", "fid", "generative_metrics", "inception_score", "precision_recall", "reference_statistics"]
