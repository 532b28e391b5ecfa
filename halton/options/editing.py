"""sample.py's editing options (``edit.*``): an image and exactly one region to regenerate, or several images with
one region each (``images`` with ``boxes`` or ``masks``, as many). Whether the files exist is the pre-flight
stage's concern; the region's bounds need the tokenizer (checked when the image is read)."""

# ruff: noqa: UP006, UP035, UP045  (OmegaConf reads these annotations to type the config keys)
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from halton.options.rules import Invalid, boolean, integer, key, number


@dataclass(frozen=True)
class EditOptions:
    image: Optional[str] = None
    box: Optional[List[float]] = None
    mask: Optional[str] = None
    outpaint: Optional[List[int]] = None
    dilate: int = 0
    composite: bool = False
    images: Optional[List[str]] = None
    boxes: Optional[List[List[float]]] = None
    masks: Optional[List[str]] = None

    def __post_init__(self) -> None:
        regions = [name for name in ("box", "mask", "outpaint") if getattr(self, name) is not None]
        if self.images is not None or self.boxes is not None or self.masks is not None:
            self._check_several(regions)
        if self.image is None and regions:
            raise Invalid(f"{key(regions[0])} needs the image to edit; pass {key('image')}=PATH")
        if self.image is not None and len(regions) != 1:
            raise Invalid(f"{key('image')} needs exactly one region, got {len(regions)} ({', '.join(regions) or 'none'}"
                          f"); allowed: {key('box')}=[x0,y0,x1,y1], {key('mask')}=PATH or "
                          f"{key('outpaint')}=[top,right,bottom,left]")
        if self.box is not None:
            check_box("box", self.box)
        if self.outpaint is not None:
            if not (isinstance(self.outpaint, (list, tuple)) and len(self.outpaint) == 4):
                raise Invalid(f"{key('outpaint')}={self.outpaint!r} is not four margins; allowed: "
                              "[top,right,bottom,left] pixels")
            for index, value in enumerate(self.outpaint):
                integer(f"outpaint.{index}", value, 0)
            if not any(self.outpaint):
                raise Invalid(f"{key('outpaint')}=[0, 0, 0, 0] extends nothing; allowed: at least one margin > 0")
        integer("dilate", self.dilate, 0)
        boolean("composite", self.composite)

    def _check_several(self, regions: list[str]) -> None:
        """Several images, each with its own region: ``images`` with ``boxes`` or ``masks``, as many."""
        several = [name for name in ("boxes", "masks") if getattr(self, name) is not None]
        if self.images is None:
            raise Invalid(f"{key(several[0])} needs the images to edit; pass {key('images')}=[PATH,...]")
        if self.image is not None or regions:
            given = ["image", *regions] if self.image is not None else regions
            raise Invalid(f"{key('images')} takes its regions from {key('boxes')} or {key('masks')}, not "
                          f"{', '.join(key(name) for name in given)}; allowed: {key('image')} with one region, or "
                          f"{key('images')} with one region per image")
        if not (isinstance(self.images, (list, tuple)) and self.images
                and all(isinstance(path, str) and path for path in self.images)):
            raise Invalid(f"{key('images')}={self.images!r} is not a list of images; allowed: [PATH,...]")
        if len(several) != 1:
            raise Invalid(f"{key('images')} needs exactly one region list, got {len(several)} "
                          f"({', '.join(several) or 'none'}); allowed: {key('boxes')}=[[x0,y0,x1,y1],...] or "
                          f"{key('masks')}=[PATH,...], one per image")
        values = getattr(self, several[0])
        if not isinstance(values, (list, tuple)) or len(values) != len(self.images):
            count = len(values) if isinstance(values, (list, tuple)) else "not a list"
            raise Invalid(f"{key(several[0])} gives {count} regions for {len(self.images)} images; allowed: one "
                          "region per image, in the same order")
        for index, value in enumerate(values):
            if several[0] == "boxes":
                check_box(f"boxes.{index}", value)
            elif not (isinstance(value, str) and value):
                raise Invalid(f"{key(f'masks.{index}')}={value!r} is not an image path; allowed: PATH (white = "
                              "regenerate)")


def check_box(name: str, box) -> None:
    """A box option (``box``, ``boxes.<i>``): four pixel coordinates [x0, y0, x1, y1]."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise Invalid(f"{key(name)}={box!r} is not a box; allowed: [x0,y0,x1,y1] in pixels")
    for index, value in enumerate(box):
        number(f"{name}.{index}", value)
