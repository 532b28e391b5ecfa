"""sample.py's editing options (``edit.*``): an image and exactly one region to regenerate. Whether the files
exist is the pre-flight stage's concern; the region's bounds need the tokenizer (checked when the image is read)."""

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

    def __post_init__(self) -> None:
        regions = [name for name in ("box", "mask", "outpaint") if getattr(self, name) is not None]
        if self.image is None and regions:
            raise Invalid(f"{key(regions[0])} needs the image to edit; pass {key('image')}=PATH")
        if self.image is not None and len(regions) != 1:
            raise Invalid(f"{key('image')} needs exactly one region, got {len(regions)} ({', '.join(regions) or 'none'}"
                          f"); allowed: {key('box')}=[x0,y0,x1,y1], {key('mask')}=PATH or "
                          f"{key('outpaint')}=[top,right,bottom,left]")
        if self.box is not None:
            if not (isinstance(self.box, (list, tuple)) and len(self.box) == 4):
                raise Invalid(f"{key('box')}={self.box!r} is not a box; allowed: [x0,y0,x1,y1] in pixels")
            for index, value in enumerate(self.box):
                number(f"box.{index}", value)
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
