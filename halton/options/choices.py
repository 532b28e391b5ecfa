"""The choice lists of the entry points' options that no option object owns: precisions, accelerators, feature
extractors, reference sets, prompt sources and the text embeddings."""

from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "bf16")  # sample.py, evaluate.py, the app and extraction (torch autocast)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
TRAINER_PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true",
                      "bf16-true", "transformer-engine", "transformer-engine-float16")  # Lightning's


@dataclass(frozen=True)
class Extractor:
    """A feature network ``extractor=`` names: its class in :mod:`halton.evaluation.features` (which builds it from
    the config and is imported only when the network is needed) and the metric columns it yields, prefixed so that
    numbers of different feature spaces never mix: a Frechet distance (``fid`` in Inception-like classifier features,
    ``fd`` in any other space), the Inception Score of a classifier's logits, precision and recall."""

    cls: str
    prefix: str
    distance: str
    classifier: bool

    @property
    def metrics(self) -> tuple[str, ...]:
        names = (self.distance, *(("is",) if self.classifier else ()), "precision", "recall")
        return tuple(self.prefix + name for name in names)


EXTRACTORS = {"inception": Extractor("InceptionFeatures", "", "fid", classifier=True),  # the FID/IS standard
              "digits": Extractor("DigitsFeatures", "digits_", "fid", classifier=True),  # the digits demo's classifier
              "dinov2": Extractor("DinoV2Features", "dinov2_", "fd", classifier=False)}  # FD-DINOv2 (Stein et al.)

REFERENCE_KINDS = ("digits", "folder", "webdataset", "file", "coco")
PROMPT_SOURCES = ("coco", "file", "digits")
PHRASINGS = ("seen", "unseen")
TEXT_EMBEDDINGS = ("online", "precompute")
SOURCE_FORMATS = ("auto", "imagefolder", "webdataset", "digits")
