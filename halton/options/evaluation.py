# ruff: noqa: UP006, UP035, UP045  (OmegaConf reads these annotations to type the config keys)
"""The options of evaluate.py (``conf/evaluate.yaml``) and the rules of their values: how many images in which
batches, the feature extractor, the reference set (``reference.*``), a text model's prompts (``prompt_set.*``), the
intermediate steps, the results file and the devices. What needs the file system (the reference and prompt files,
a writable results folder) is checked by the pre-flight stage."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any, List, Optional

from halton.options.choices import (
    ACCELERATORS,
    EXTRACTORS,
    PHRASINGS,
    PRECISIONS,
    PROMPT_SOURCES,
    REFERENCE_KINDS,
)
from halton.options.rules import Invalid, boolean, choice, integer, key, seed


def balanced(num_images: Any, num_classes: int) -> int:
    """``num_images`` class-balanced samples: a positive multiple of ``num_classes``."""
    integer("num_images", num_images, 1)
    if num_images % num_classes:
        low, high = num_classes * max(1, num_images // num_classes), num_classes * (num_images // num_classes + 1)
        raise Invalid(f"{key('num_images')}={num_images} is not a multiple of the {num_classes} classes "
                      f"(class-balanced samples); allowed: {low}, {high}, ...")
    return num_images


@dataclass(frozen=True)
class ReferenceOptions:
    """The real images the generated ones are compared with (``reference.*``): precomputed statistics (``file``)
    or a set whose statistics are computed and cached; ``max_images`` of it at most."""

    kind: str = "file"
    path: Optional[str] = None
    captions: Optional[str] = None
    max_images: int = 50000
    extractors: InitVar[tuple[str, ...]] = ()  # the evaluation's (EvaluationOptions.extractors), when known

    def __post_init__(self, extractors: tuple[str, ...]) -> None:
        choice("kind", self.kind, REFERENCE_KINDS)
        if self.kind == "file" and len(extractors) > 1:  # a precomputed file holds one feature space's statistics
            raise Invalid(f"{key('kind')}=file is one extractor's precomputed statistics, and extractor="
                          f"[{','.join(extractors)}] needs {len(extractors)}; allowed: one extractor with kind=file, "
                          f"or kind={'|'.join(k for k in REFERENCE_KINDS if k != 'file')} (statistics computed and "
                          "cached per extractor)")
        if self.kind == "webdataset" and not self.path:
            raise Invalid(f"{key('path')} is not set; allowed: webdataset image shards (a .tar file or a glob)")
        integer("max_images", self.max_images, 1)


@dataclass(frozen=True)
class PromptSetOptions:
    """A text model's evaluation prompts (``prompt_set.*``): COCO captions or a prompt file at ``path``, or the
    digits' phrasings; ``seed`` chooses the captions."""

    source: str = "coco"
    path: Optional[str] = None
    seed: int = 0
    phrasings: str = "seen"

    def __post_init__(self) -> None:
        choice("source", self.source, PROMPT_SOURCES)
        seed(self.seed, "seed")
        choice("phrasings", self.phrasings, PHRASINGS)


@dataclass(frozen=True)
class EvaluationOptions:
    """evaluate.py's top-level options. ``num_classes`` (a class model's, when known): ``num_images`` is
    class-balanced; ``steps`` (the sampling steps, when known) bounds ``intermediate_steps``."""

    num_images: int = 1000
    batch_size: int = 250
    extractor: Any = "inception"  # a name of EXTRACTORS, or a list of them run on the same samples
    intermediate_steps: List[int] = field(default_factory=list)
    diagnostics: bool = True
    grid_per_class: int = 4
    force: bool = False
    results: Optional[str] = None
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    num_classes: InitVar[Optional[int]] = None
    steps: InitVar[Optional[int]] = None

    def __post_init__(self, num_classes: int | None, steps: int | None) -> None:
        choice("precision", self.precision, PRECISIONS)
        if num_classes is None:
            integer("num_images", self.num_images, 1)
        else:
            balanced(self.num_images, num_classes)
        integer("batch_size", self.batch_size, 1)
        names = self.extractors
        if not names:
            raise Invalid(f"{key('extractor')}=[] names no feature extractor; allowed: {', '.join(EXTRACTORS)}, or "
                          "a list of them such as [inception,dinov2]")
        for name in names:
            choice("extractor", name, tuple(EXTRACTORS))
        if len(set(names)) < len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise Invalid(f"{key('extractor')}=[{','.join(map(str, names))}] names {twice} twice; allowed: each "
                          "extractor once")
        if not isinstance(self.intermediate_steps, (list, tuple)):
            raise Invalid(f"{key('intermediate_steps')}={self.intermediate_steps!r} is not a list; allowed: e.g. "
                          "[4,8,16], or []")
        for value in self.intermediate_steps:
            integer("intermediate_steps", value, 1, steps)
        boolean("diagnostics", self.diagnostics)
        boolean("force", self.force)
        integer("grid_per_class", self.grid_per_class, 0)
        choice("accelerator", self.accelerator, ACCELERATORS)
        integer("devices", self.devices, 1)
        integer("num_nodes", self.num_nodes, 1)

    @property
    def extractors(self) -> tuple[str, ...]:
        """The feature extractors' names, in the order given: each yields its own metric columns."""
        return tuple(self.extractor) if isinstance(self.extractor, (list, tuple)) else (self.extractor,)
