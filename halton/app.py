"""A web page to try a trained model: python -m halton.app experiment=digits (checkpoint=PATH, host, port, share:
conf/app.yaml), then open http://127.0.0.1:7860.

The page draws a sample grid for the classes or prompts given, with the scheduler, steps, guidance, temperatures,
top-k, seed and samples per condition chosen there; a slider walks through the steps (still-masked tokens in red,
as in sample.py's progression image). "Compare schedulers" draws the same request with two or three schedulers and
the same seed side by side; "Edit" regenerates a region (a typed box and/or painted strokes) of an uploaded image.
The command line's other sampling options (conf/sampling: e.g. ``cache_refresh=4`` for cached sampling, schedule,
temperature power) apply to every request.

The model, its tokenizer and its kind of condition load once, at start-up, as a halton.Pipeline: every request
draws through it. Gradio is an optional extra: pip install -e '.[app]'.

Uploads: at most ``max_upload_mb`` each; an edit's uploaded files are checked from their header (an image, at most
halton.utils.pixels.MAX_PIXELS pixels) before they are decoded, and deleted once read; everything Gradio stores lives
in the app's own temporary folder, swept of files older than an hour and removed when the app stops (also on Ctrl-C
and SIGTERM).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from halton.cli import entry_point, fail, resolve_autocast, resolve_device, run
from halton.options import SamplingOptions
from halton.options.drawing import DrawOptions, ServeOptions
from halton.options.rules import SEED_RANGE, Invalid, from_config, integer, key
from halton.options.sampling import RANGES, check_top_k
from halton.utils.errors import first_line
from halton.utils.pixels import open_image, unreadable
from halton.validation import CONFIG_DIR

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL.Image import Image

    from halton.pipeline import Pipeline, PipelineOutput

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no calls home, no update check
log = logging.getLogger("halton.app")
MAX_IMAGES = 256        # per request: conditions x samples per condition
MAX_PER_CONDITION = 16
MAX_CHECKBOXES = 32     # class models with more classes take typed ids
EDIT_VIEW = 256         # a generated sample goes to the editor at least this large, so that strokes are easy to paint
# Gradio's stored files older than an hour are deleted every 10 minutes: the results shown, and the copies of the
# editor's canvas that the page uploads around each request without sending them with one (those it sends are
# deleted once read).
CACHE_SWEEP_S = (600, 3600)
REMEMBERED_UPLOADS = 6  # decoded edit uploads kept once their files are deleted: a second click sends the same files
PENDING_CANVASES = 32   # editor canvases sent as bytes, held in memory (a request's validator and the request read
                        # them): beyond this many, the oldest go
MAX_LAYERS = 16         # paint layers of one canvas sent as bytes (Gradio makes room for any index it is sent)
LOOPBACK_NAMES = ("localhost",)
COMPARED_WIDTH = 420    # px: the least width of a comparison grid (side by side where the window has room)
# The comparison's grids fill their column, at most COMPARED_HEIGHT tall, small ones (digits) enlarged without blur
COMPARED_HEIGHT = 640   # px
PAGE_CSS = (".compared button, .compared .image-frame { width: 100% !important; } "
            ".compared img { width: 100% !important; height: auto !important; "
            f"max-height: {COMPARED_HEIGHT}px !important; object-fit: contain !important; "
            "image-rendering: pixelated; }")


@contextlib.contextmanager
def about(control: str, named: tuple[str, ...] = ()):
    """A ValueError raised inside is about the page's field ``control`` (or, when its message starts with the
    ``key=`` of one of ``named``, that one): the events' validator marks that field with the message."""
    try:
        yield
    except ValueError as error:
        name = str(error).partition("=")[0]
        error.control = name if name in named else control
        raise


def as_whole(value):
    """A number field's value (the page sends floats, or None for an empty field) as an int when it is one."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def whole(value, name: str, low: int, high: int | None = None, note: str = "") -> int:
    """A number field's value as a whole number in [low, high], checked as the command line's values are."""
    return integer(name, as_whole(value), low, high, note=note)


def parse_classes(value, num_classes: int) -> list[int]:
    """Class ids from a checkbox group (a list of strings) or a text field ("1, 207 360")."""
    items = [str(v) for v in value] if isinstance(value, (list, tuple)) else re.split(r"[\s,;]+", str(value or ""))
    items = [item for item in items if item]
    if not items:
        raise ValueError(f"no class picked; allowed: class ids 0 to {num_classes - 1}")
    classes = []
    for item in items:
        if not re.fullmatch(r"\d+", item):
            raise ValueError(f"{item!r} is not a class id; allowed: whole numbers 0 to {num_classes - 1}, separated "
                             "by commas")
        if int(item) >= num_classes:
            raise ValueError(f"class id {item} is out of range; allowed: 0 to {num_classes - 1}")
        classes.append(int(item))
    return classes


def parse_prompts(text) -> list[str]:
    """One prompt per line; blank lines skipped."""
    prompts = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompt given; type one prompt per line, e.g. the digit 7")
    return prompts


def parse_top_k(text, codebook_size: int) -> int | None:
    """The typed top-k, checked by the sampling options' rule: empty (None) or 0 draw from every code."""
    text = str(text if text is not None else "").strip()
    return check_top_k(int(text) if re.fullmatch(r"-?\d+", text) else text or None, codebook_size)


def parse_box(text, image_size: tuple[int, int]) -> list[float] | None:
    """A typed box "x0,y0,x1,y1" in pixels of the model's image (its bounds are checked by ``box_mask``); empty:
    none."""
    text = str(text or "").strip().strip("[]()")
    if not text:
        return None
    items = [item for item in re.split(r"[\s,;]+", text) if item]
    try:
        values = [float(item) for item in items]
    except ValueError:
        values = []
    if len(values) != 4:
        height, width = image_size
        raise ValueError(f"box {text!r} is not four numbers; allowed: x0,y0,x1,y1 in pixels of the {width}x{height} "
                         f"image, e.g. 0,0,{width // 2},{height // 2}")
    return [int(v) if v.is_integer() else v for v in values]


@dataclass
class Settings:
    """One request of the page, checked."""

    values: list          # class ids or prompts: one grid row each
    scheduler: str
    steps: int
    cfg_weight: float
    temp_min: float
    temp_max: float
    top_k: int | None
    seed: int
    per_condition: int


@dataclass
class Drawn:
    """What the step slider and the editor need of the last grid: the codes after each step (CPU) and its rows."""

    codes_per_step: torch.Tensor  # [steps, B, h, w]
    labels: list[str]
    per_condition: int


class Studio:
    """The app's :class:`halton.Pipeline` (the loaded model with its tokenizer and kind of condition, the command
    line's scheduler and sampling options: ``options``; the page's fields replace steps, cfg_weight, temperatures,
    top_k and seed per request) and the page's schedulers: the command line's, and the others with their defaults.
    Every method takes the page's raw values and raises ValueError in one line for a bad one."""

    def __init__(self, pipeline: Pipeline, autocast_dtype=None):
        from halton.sampling import SCHEDULERS, build_scheduler

        self.pipeline, self.autocast_dtype = pipeline, autocast_dtype
        self.net, self.tokenizer, self.kind = pipeline.model, pipeline.tokenizer, pipeline.condition
        self.device = pipeline.device
        chosen = pipeline.scheduler
        self.schedulers = {name: chosen if name == chosen.name else build_scheduler(name) for name in SCHEDULERS}
        self.default_scheduler = chosen.name
        self.is_text = self.kind.name == "text"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Studio:
        from halton.pipeline import Pipeline

        draw = from_config(DrawOptions, cfg)
        device = resolve_device(draw.device)
        # a text model's encoder loads now rather than at the first request
        return cls(Pipeline.from_config(cfg, device), autocast_dtype=resolve_autocast(draw.precision, device))

    @property
    def options(self) -> SamplingOptions:
        """The command line's sampling options: the pipeline's defaults."""
        return self.pipeline.sampling

    @options.setter
    def options(self, options: SamplingOptions) -> None:
        self.pipeline.sampling = options

    @property
    def num_tokens(self) -> int:
        return self.net.num_tokens

    @property
    def image_size(self) -> tuple[int, int]:
        return self.net.grid[0] * self.tokenizer.downsample, self.net.grid[1] * self.tokenizer.downsample

    def settings(self, conditions, scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed,
                 per_condition) -> Settings:
        """The page's values checked; a bad one raises ValueError about its field (``error.control``: the name of
        its parameter here)."""
        with about("conditions"):
            values = parse_prompts(conditions) if self.is_text else parse_classes(conditions, self.net.num_classes)
        with about("scheduler"):
            if scheduler not in self.schedulers:
                raise ValueError(f"unknown scheduler {scheduler!r}; allowed: {', '.join(self.schedulers)}")
        with about("per_condition"):
            per_condition = whole(per_condition, "samples per condition", 1, MAX_PER_CONDITION)
            if len(values) * per_condition > MAX_IMAGES:
                raise ValueError(f"{len(values)} conditions x {per_condition} samples = "
                                 f"{len(values) * per_condition} images; allowed: at most {MAX_IMAGES} per request")
        with about("top_k"):
            top_k = parse_top_k(top_k, self.net.codebook_size)
        # checked as the command line's; a rule between a field and the command line's options (temp_warmup)
        # is about steps
        with about("steps", named=("steps", "cfg_weight", "temp_min", "temp_max", "seed")):
            options = dataclasses.replace(self.options, steps=as_whole(steps), cfg_weight=cfg_weight,
                                          temp_min=temp_min, temp_max=temp_max, top_k=top_k, seed=as_whole(seed),
                                          num_tokens=self.num_tokens, codebook_size=self.net.codebook_size)
        return Settings(values, scheduler, options.steps, float(options.cfg_weight), float(options.temp_min),
                        float(options.temp_max), options.top_k, options.seed, per_condition)

    def sample(self, settings: Settings, scheduler: str | None = None, edit=None, paste_back: bool = False,
               history: bool = False) -> PipelineOutput:
        """The pipeline's draw of every condition x samples per condition, row by row, with the page's values
        (``edit``: :meth:`prepare_edit`'s; ``history``: the codes after each step too)."""
        asked = {"prompts" if self.is_text else "classes": settings.values}
        return self.pipeline(**asked, per_condition=settings.per_condition,
                             scheduler=self.schedulers[scheduler or settings.scheduler], edit=edit,
                             paste_back=paste_back, return_history=history, progress=True,
                             autocast_dtype=self.autocast_dtype, steps=settings.steps, cfg_weight=settings.cfg_weight,
                             temp_min=settings.temp_min, temp_max=settings.temp_max, top_k=settings.top_k,
                             seed=settings.seed)

    def labels(self, settings: Settings) -> list[str]:
        return [self.kind.label(value) for value in settings.values]

    def generate(self, settings: Settings) -> tuple[np.ndarray, Drawn, str]:
        """The labelled grid (uint8 [H, W, 3]), what the step slider needs, and a line on what was done."""
        import torch

        from halton.utils.images import class_grid

        began = time.perf_counter()
        drawn = self.sample(settings, history=True)
        labels = self.labels(settings)
        grid = class_grid(drawn.pixels, len(labels), settings.per_condition, labels)
        record = Drawn(torch.stack(drawn.codes_per_step).cpu(), labels, settings.per_condition)
        return as_array(grid), record, self.summary(settings, settings.scheduler, drawn, began)

    def summary(self, settings: Settings, scheduler: str, result: PipelineOutput, began: float) -> str:
        return (f"{len(settings.values)} x {settings.per_condition} samples, {self.schedulers[scheduler].label()}, "
                f"{settings.steps} steps, {result.nfe_per_image} network evaluations per image, "
                + (f"cached (a full evaluation every {self.options.cache_refresh} steps: "
                   f"{result.position_layers_per_image} trunk position-layers per image), "
                   if self.options.cache_refresh is not None else "")
                + f"{time.perf_counter() - began:.1f} s on {self.device}")

    def step_picture(self, drawn: Drawn, step) -> np.ndarray:
        """The grid after ``step`` (1-based) with the still-masked tokens painted as in sample.py's progression."""
        from halton.sampling.editing import paint_tokens
        from halton.utils.images import class_grid

        step = whole(step, "step", 1, len(drawn.codes_per_step))
        codes = drawn.codes_per_step[step - 1].to(self.device)
        images = paint_tokens(self.pipeline.decode(codes), codes == self.net.mask_id)
        return as_array(class_grid(images, len(drawn.labels), drawn.per_condition, drawn.labels))

    def compared(self, names) -> list[str]:
        """The schedulers picked for a comparison: two or three of the page's."""
        names = list(names or [])
        if not 2 <= len(names) <= 3 or any(name not in self.schedulers for name in names):
            raise ValueError(f"pick two or three schedulers to compare, got {len(names)} ({', '.join(names) or 'none'}"
                             f"); allowed: {', '.join(self.schedulers)}")
        return names

    def compare(self, settings: Settings, names) -> list[tuple[str, np.ndarray]]:
        """The same request (and seed) drawn by each scheduler of ``names``: [(label, grid)]."""
        from halton.utils.images import class_grid

        names = self.compared(names)
        labels, grids = self.labels(settings), []
        for name in names:
            images = self.sample(settings, scheduler=name).pixels
            grids.append((self.schedulers[name].label(), as_array(class_grid(images, len(labels),
                                                                               settings.per_condition, labels))))
        return grids

    def prepare_edit(self, settings: Settings, image: Image | None, painted: Image | None, box_text, margin):
        """The edit of ``image`` (a :class:`halton.sampling.editing.Edit`) whose region is the typed box, the
        painted strokes (``painted``: a mask at the image's size, white = painted) or both, with ``margin`` tokens
        around it, checked against ``settings`` (steps at most the region's tokens); a bad value raises ValueError
        about its field."""
        import numpy as np
        import torch

        from halton.options.sampling import check_edit_steps
        from halton.sampling.editing import box_mask, prepare_edit

        with about("image"):
            if image is None:
                raise ValueError("no image to edit; upload one (or take a generated sample) first")
        with about("box"):
            box = parse_box(box_text, self.image_size)
        strokes = None
        if painted is not None and painted.getbbox() is not None:
            strokes = torch.from_numpy(np.asarray(fit(painted, self.image_size, mask=True)) > 0)
        with about("box"):
            if box is None and strokes is None:
                raise ValueError("no region to regenerate; type a box x0,y0,x1,y1 or paint over the image")
            if strokes is None:
                region = {"box": box}
            else:  # strokes, or strokes and a box: their union as one pixel mask
                region = {"mask": strokes if box is None else strokes | box_mask(box, self.image_size,
                                                                                 self.image_size)}
        with about("margin"):
            dilate = whole(margin, "margin", 0, max(self.net.grid))
        with about("box"):
            edit = prepare_edit(self.net, self.tokenizer, fit(image, self.image_size), dilate=dilate,
                                device=self.device, **region)
        with about("steps"):
            check_edit_steps(settings.steps, int(edit.mask.sum()))
        return edit

    def edit(self, settings: Settings, image: Image | None, painted: Image | None, box_text, margin,
             paste_back: bool) -> tuple[np.ndarray, str]:
        """Regenerate the region of ``image`` (:meth:`prepare_edit`): a row per condition, before / region / after
        (uint8 [H, W, 3]), and a line on what was done."""
        from halton.sampling.editing import edit_grid

        began = time.perf_counter()
        edit = self.prepare_edit(settings, image, painted, box_text, margin)
        result = self.sample(settings, edit=edit, paste_back=bool(paste_back))
        grid = edit_grid(edit, result.pixels, self.labels(settings), settings.per_condition)
        return as_array(grid), (f"{int(edit.mask.sum())} of {self.num_tokens} tokens regenerated; "
                                + self.summary(settings, settings.scheduler, result, began))

    def first_sample(self, drawn: Drawn | None) -> Image:
        """The first sample of the last grid as a PIL image for the editor, enlarged (nearest) to EDIT_VIEW."""
        from PIL import Image

        from halton.pipeline import to_pil

        if drawn is None:
            raise ValueError("no sample yet; generate a grid first")
        picture = to_pil(self.pipeline.decode(drawn.codes_per_step[-1][:1].to(self.device)))[0]
        scale = max(1, -(-EDIT_VIEW // min(picture.size)))
        return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).convert("RGB")


def fit(image: Image, image_size: tuple[int, int], mask: bool = False) -> Image:
    """An upload brought to the model's image size the way read_image does (cover, center-crop), but averaging
    over each target pixel's area when shrinking: an enlarged sample comes back exactly, and a mask keeps every
    painted stroke (any painted pixel in a target pixel marks it) instead of the one pixel nearest sampling sees."""
    from PIL import Image

    height, width = image_size
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.convert("L" if mask else "RGB")
    if size != image.size:
        image = image.resize(size, Image.BOX if scale < 1 else Image.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return image.point(lambda level: 255 if level else 0) if mask else image


def painted_mask(editor_value: dict | None) -> Image | None:
    """The strokes of an ImageEditor value (its layers' opaque pixels) as an L image, white = painted; None
    without a background."""
    from PIL import Image, ImageChops

    background = (editor_value or {}).get("background")
    if background is None:
        return None
    mask = Image.new("L", background.size, 0)
    for layer in editor_value.get("layers") or []:
        if layer is not None and layer.mode == "RGBA":
            mask = ImageChops.lighter(mask, layer.getchannel("A").resize(background.size))
    return mask


def as_array(picture: torch.Tensor) -> np.ndarray:
    """A [3, H, W] uint8 tensor as the [H, W, 3] array gr.Image shows."""
    return picture.permute(1, 2, 0).contiguous().cpu().numpy()


def page_error(message: str):
    """gr.Error: the page shows ``message``; the console gets no traceback for it (a bad value, not a failure)."""
    import gradio as gr

    return gr.Error(message, print_exception=False)


def answered_in_page(handler):
    """Bad values come back as a message in the page (gr.Error), never as a traceback; unexpected failures are
    logged with their traceback on the console and answered in one line."""
    import gradio as gr

    @functools.wraps(handler)
    def answered(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, TypeError) as error:
            raise page_error(first_line(error)) from None
        except Exception as error:
            log.exception("the request failed")
            raise page_error(f"the request failed: {type(error).__name__}: {first_line(error)}") from None
    return answered


def checked_editor(**kwargs):
    """A gr.ImageEditor whose uploaded files are checked before they are decoded (an image of at most MAX_PIXELS
    pixels, else one line in the page) and deleted once read (:class:`UploadReader`). (A subclass would do, but
    Gradio writes a .pyi file beside the module of every component class.)"""
    import gradio as gr

    editor = gr.ImageEditor(**kwargs)
    editor.convert_and_format_image = UploadReader(editor.convert_and_format_image)
    editor.accept_blobs = bounded_canvases(editor)
    editor.preprocess = canvas_kept(editor)
    return editor


def canvas_kept(editor):
    """The editor's reading of an event's value, keeping a canvas sent as bytes: Gradio drops it once read, but the
    event's validator reads it before the event does (the canvases waiting stay bounded by PENDING_CANVASES)."""
    preprocess = editor.preprocess

    @functools.wraps(preprocess)
    def preprocess_keeping(payload):
        kept = editor.blob_storage.get(payload.id) if payload is not None and payload.id is not None else None
        value = preprocess(payload)
        if kept is not None:
            editor.blob_storage[payload.id] = kept
        return value
    return preprocess_keeping


@dataclass
class Refused:
    """An uploaded file the editor would not read (no image, too many pixels, gone), in place of its picture: the
    edit's checks answer with ``message`` about the image field, so the page keeps what it shows."""

    message: str


def edited_pictures(editor_value: dict | None) -> tuple[Image | None, Image | None]:
    """The editor's uploaded image and its painted strokes (:func:`painted_mask`); a refused upload raises its
    one-line message (about the image field)."""
    value = editor_value or {}
    for part in [value.get("background"), value.get("composite"), *(value.get("layers") or [])]:
        if isinstance(part, Refused):
            with about("image"):
                raise ValueError(part.message)
    return value.get("background"), painted_mask(value)


def bounded_canvases(editor):
    """The editor's server function that takes a canvas as bytes, bounded: at most MAX_LAYERS layers and
    PENDING_CANVASES canvases waiting for a request (Gradio keeps every one it is sent, and for a layer index of
    10**9 it would allocate a list of that length)."""
    accept = editor.accept_blobs

    @functools.wraps(accept)
    def accept_bounded(data):
        index = data.data.get("index")
        if index not in (None, "", "null") and not (str(index).isdigit() and int(index) < MAX_LAYERS):
            raise page_error(f"layer {str(index)[:20]!r} of the edited image is out of range; allowed: 0 to "
                             f"{MAX_LAYERS - 1}")
        accept(data)
        while len(editor.blob_storage) > PENDING_CANVASES:
            editor.blob_storage.pop(next(iter(editor.blob_storage)))

    accept_bounded._is_server_fn = True  # what Gradio's component server calls
    return accept_bounded


class UploadReader:
    """What an ImageEditor does with each file it is sent (``convert``: its own reading), preceded by the check of
    the header (a file refused becomes :class:`Refused`) and followed by the deletion of the uploaded file. The
    decoded picture is remembered by path (the path holds the content's hash): the page sends the same files again
    when Regenerate is clicked twice, and the event's validator reads them before the event does."""

    def __init__(self, convert):
        self.convert = convert
        self.remembered: collections.OrderedDict = collections.OrderedDict()

    def __call__(self, file, flatten_on_white: bool = False):
        from gradio.data_classes import FileData
        from gradio.utils import get_upload_folder, is_in_or_equal

        if file is None:
            return None
        if not isinstance(file, FileData):  # bytes the page sent without a file
            return self.decoded(file, "the edited image", flatten_on_white)
        known, uploaded = (file.path, flatten_on_white), is_in_or_equal(file.path, get_upload_folder())
        if known in self.remembered:  # the same content (the page may have uploaded it again)
            self.remembered.move_to_end(known)
            if uploaded:
                remove_upload(Path(file.path))
            return self.remembered[known]
        name = file.orig_name or Path(file.path).name
        if not os.path.isfile(file.path):
            return Refused(f"{name} is no longer on the server; upload the image again")
        try:
            picture = self.decoded(file, name, flatten_on_white)
        finally:
            if uploaded:
                remove_upload(Path(file.path))
        self.remembered[known] = picture
        while len(self.remembered) > REMEMBERED_UPLOADS:
            self.remembered.popitem(last=False)
        return picture

    def decoded(self, file, name: str, flatten_on_white: bool):
        import io

        from gradio.data_classes import FileData

        try:
            with open_image(file.path if isinstance(file, FileData) else io.BytesIO(file), name):
                pass  # the header says it is an image within the pixel limit
            picture = self.convert(file, flatten_on_white)
            if hasattr(picture, "load"):
                picture.load()  # decoded now: its file may go
            return picture
        except ValueError as error:
            return Refused(first_line(error))
        except (OSError, SyntaxError) as error:  # a header that looked right over damaged pixels
            return Refused(f"{name} cannot be read as an image: {unreadable(error)}")


def remove_upload(path: Path) -> None:
    """Delete an uploaded file and the folder Gradio made for it (named for its content's hash) once empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def shown_image(label: str, elem_id: str, **kwargs):
    """An output picture, sent as PNG (Gradio's default WebP is lossy); its label is not drawn, as Gradio would
    float it over the grid's first row label."""
    import gradio as gr

    return gr.Image(label=label, show_label=False, format="png", interactive=False, elem_id=elem_id,
                    buttons=["download", "fullscreen"], **kwargs)


def number_field(value, label: str, elem_id: str, low=None, high=None, above=None, whole: bool = False):
    """A number field bounded as the rule of its value bounds it (``above``: an exclusive lower bound, the field's
    minimum): the browser's arrows stay inside. Values are checked by the events' validator, in the rule's words;
    Gradio's own refusal of an out-of-range number is left out, as it comes first, in other words, and as an error
    that blanks the page's results."""
    import gradio as gr

    field = gr.Number(value, label=label, elem_id=elem_id, minimum=low if low is not None else above, maximum=high,
                      precision=0 if whole else None, step=1 if whole else 0.1)
    field.raise_if_out_of_bounds = lambda *number_and_bounds: None
    return field


def validator_for(handler, check):
    """The validator of an event whose function is ``handler``: ``check`` takes the same values and raises
    ValueError for a bad one, about a field (``error.control``, a parameter name of ``handler``; else the first).
    Gradio runs it before the event is queued: that field shows the one-line message, the page keeps the results it
    shows, and a script (gradio_client) gets the message as a ValidationError."""
    import gradio as gr

    names = [name for name in inspect.signature(handler).parameters if name != "progress"]

    def validator(*values):
        try:
            check(*values)
        except (ValueError, TypeError) as error:
            blamed = getattr(error, "control", None)
            blamed = blamed if blamed in names else names[0]
            return [gr.validate(name != blamed, first_line(error) if name == blamed else "") for name in names]
        except Exception:  # not a bad value: the event runs and answers it (logged, in one line)
            log.debug("the validator let a failure through to the event", exc_info=True)
        return [gr.validate(True, "") for _ in names]
    return validator


def build_page(studio: Studio, defaults: dict, title: str):
    """The Gradio Blocks page over ``studio``; ``defaults``: the controls' first values (conf/app.yaml). Its events
    are API endpoints (/generate, /step, /compare, /take_sample, /edit) for gradio_client."""
    import gradio as gr

    net = studio.net
    steps_range = (RANGES["steps"]["low"], studio.num_tokens)
    with gr.Blocks(title=title, delete_cache=CACHE_SWEEP_S) as page:
        kind = "text-to-image" if studio.is_text else f"class-conditional, {net.num_classes} classes"
        height, width = studio.image_size
        gr.Markdown(f"## Halton-MaskGIT: {title}\n{kind}, {width}x{height} images from {net.grid[0]}x{net.grid[1]} "
                    f"tokens ({net.codebook_size} codes), on {studio.device}")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                if studio.is_text:
                    conditions = gr.Textbox(defaults["prompts"], lines=4, label="Prompts, one per line",
                                            elem_id="conditions")
                elif net.num_classes <= MAX_CHECKBOXES:
                    conditions = gr.CheckboxGroup([str(c) for c in range(net.num_classes)], label="Classes",
                                                  value=[str(c) for c in defaults["classes"]], elem_id="conditions")
                else:
                    conditions = gr.Textbox(", ".join(map(str, defaults["classes"])), elem_id="conditions",
                                            label=f"Class ids 0 to {net.num_classes - 1}, separated by commas")
                scheduler = gr.Radio(list(studio.schedulers), value=defaults["scheduler"], label="Scheduler",
                                     elem_id="scheduler")
                steps = number_field(defaults["steps"], f"Steps ({steps_range[0]} to {steps_range[1]})", "steps",
                                     *steps_range, whole=True)
                cfg_weight = number_field(defaults["cfg_weight"], "CFG weight (0: no guidance)", "cfg",
                                          **RANGES["cfg_weight"])
                with gr.Row():
                    temp_min = number_field(defaults["temp_min"], "temp_min", "temp_min", **RANGES["temp_min"])
                    temp_max = number_field(defaults["temp_max"], "temp_max", "temp_max", **RANGES["temp_max"])
                top_k = gr.Textbox(defaults["top_k"], label="Top-k (empty or 0: none)", elem_id="top_k")
                with gr.Row():
                    seed = number_field(defaults["seed"], "Seed", "seed", *SEED_RANGE, whole=True)
                    per_condition = number_field(defaults["per_condition"],
                                                 f"Samples per {'prompt' if studio.is_text else 'class'}",
                                                 "per_condition", 1, MAX_PER_CONDITION, whole=True)
            with gr.Column(scale=2):
                drawn = gr.State(None)
                with gr.Tab("Generate"):
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Row():
                        grid = shown_image("Samples: a row per condition", "grid")
                        with gr.Column():
                            step = gr.Slider(1, defaults["steps"], value=defaults["steps"], step=1, elem_id="step",
                                             label="Step by step: the grid after step (red: still masked)")
                            step_grid = shown_image("After the step", "step_grid")
                with gr.Tab("Compare schedulers"):
                    schedulers = gr.CheckboxGroup(list(studio.schedulers), value=list(studio.schedulers),
                                                  label="Two or three schedulers, same seed", elem_id="compared")
                    compare = gr.Button("Compare", variant="primary", elem_id="compare")
                    titles, side_by_side = [], []
                    with gr.Row():  # side by side where the window has room for them at COMPARED_WIDTH, else stacked
                        for i, name in enumerate(studio.schedulers):
                            with gr.Column(min_width=COMPARED_WIDTH):
                                titles.append(gr.Markdown(f"**{name}**", elem_id=f"compare_title_{i}"))
                                side_by_side.append(shown_image(name, f"compare_{i}", elem_classes="compared"))
                with gr.Tab("Edit"):
                    gr.Markdown(f"Upload an image (it is resized to cover {width}x{height} and center-cropped) and "
                                "give the region to regenerate: paint over it, type a box, or both. Every condition "
                                "and setting on the left applies; steps must not exceed the region's tokens. The "
                                "result: a row per condition, the image, its region in red, then the samples.")
                    with gr.Row():
                        editor = checked_editor(type="pil", format="png", label="Image (paint the region)",
                                                brush=gr.Brush(colors=["#e01a1a"], color_mode="fixed"),
                                                elem_id="editor")
                        with gr.Column():
                            box = gr.Textbox("", label=f"Box x0,y0,x1,y1 in pixels of the {width}x{height} image",
                                             placeholder=f"e.g. 0,0,{width // 2},{height // 2}", elem_id="box")
                            margin = number_field(0, "Margin around the region (tokens)", "margin", 0,
                                                  max(net.grid), whole=True)
                            paste_back = gr.Checkbox(False, label="Paste the original back outside the region")
                            take_sample = gr.Button("Edit the first generated sample", elem_id="take_sample")
                            regenerate = gr.Button("Regenerate the region", variant="primary", elem_id="regenerate")
                    edited = shown_image("A row per condition: before, region, after", "edited")
                status = gr.Markdown(elem_id="status")

        controls = [conditions, scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed, per_condition]

        @answered_in_page
        def on_generate(conditions, scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed, per_condition,
                        progress=gr.Progress(track_tqdm=True)):
            settings = studio.settings(conditions, scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed,
                                       per_condition)
            picture, record, summary = studio.generate(settings)
            last = gr.Slider(1, settings.steps, value=settings.steps, step=1)
            return picture, record, last, studio.step_picture(record, settings.steps), summary

        @answered_in_page
        def on_step(record, step):
            return None if record is None else studio.step_picture(record, step)

        @answered_in_page
        def on_compare(schedulers, conditions, scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed,
                       per_condition, progress=gr.Progress(track_tqdm=True)):
            settings = studio.settings(conditions, scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed,
                                       per_condition)
            grids = studio.compare(settings, schedulers)
            hidden = len(side_by_side) - len(grids)
            shown = [gr.Image(value=picture, label=label, visible=True) for label, picture in grids]
            named = [gr.Markdown(f"**{label}**", visible=True) for label, _ in grids]
            return (*shown, *[gr.Image(value=None, visible=False)] * hidden, *named,
                    *[gr.Markdown(visible=False)] * hidden,
                    f"compared {', '.join(label for label, _ in grids)} with seed {settings.seed}")

        @answered_in_page
        def on_edit(image, box, margin, paste_back, conditions, scheduler, steps, cfg_weight, temp_min, temp_max,
                    top_k, seed, per_condition, progress=gr.Progress(track_tqdm=True)):
            settings = studio.settings(conditions, scheduler, steps, cfg_weight, temp_min, temp_max, top_k, seed,
                                       per_condition)
            return studio.edit(settings, *edited_pictures(image), box, margin, paste_back)

        def check_compare(schedulers, *values):
            with about("schedulers"):
                studio.compared(schedulers)
            studio.settings(*values)

        def check_edit(image, box, margin, paste_back, *values):
            studio.prepare_edit(studio.settings(*values), *edited_pictures(image), box, margin)

        # One request at a time across the page's events: they share the model (and the CPU or GPU). Bad values
        # are answered by each event's validator before it is queued, so the page keeps what it shows.
        one_at_a_time = {"concurrency_id": "model", "concurrency_limit": 1}
        generate.click(on_generate, controls, [grid, drawn, step, step_grid, status], api_name="generate",
                       validator=validator_for(on_generate, studio.settings), **one_at_a_time)
        step.input(on_step, [drawn, step], step_grid, trigger_mode="always_last", show_progress="hidden",
                   api_name="step", **one_at_a_time)
        compare.click(on_compare, [schedulers, *controls], [*side_by_side, *titles, status], api_name="compare",
                      validator=validator_for(on_compare, check_compare), **one_at_a_time)
        take_sample.click(answered_in_page(studio.first_sample), drawn, editor, api_name="take_sample",
                          **one_at_a_time)
        regenerate.click(on_edit, [editor, box, margin, paste_back, *controls], [edited, status], api_name="edit",
                         validator=validator_for(on_edit, check_edit), **one_at_a_time)
    return page


def page_defaults(cfg: DictConfig, studio: Studio) -> dict:
    """The controls' first values: conf/app.yaml's sampling options, every class of a small class set (else the
    first few), the prompts given or the model config's grid prompts."""
    net = studio.net
    if studio.is_text:
        prompts = list(cfg.prompts or []) or studio.kind.grid_values(net)[:4]
        conditions = {"prompts": "\n".join(map(str, prompts)), "classes": []}
    else:
        classes = [cfg.classes] if isinstance(cfg.classes, int) else list(cfg.classes or [])
        conditions = {"classes": classes or list(range(min(net.num_classes, 10))), "prompts": ""}
    return {**conditions, "scheduler": studio.default_scheduler, "steps": cfg.steps, "cfg_weight": cfg.cfg_weight,
            "temp_min": cfg.temp_min, "temp_max": cfg.temp_max, "top_k": "" if cfg.top_k is None else str(cfg.top_k),
            "seed": cfg.seed, "per_condition": cfg.per_class}


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Whether ``host`` serves this machine only (127.0.0.1, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in LOOPBACK_NAMES


def exposure_warning(serve: ServeOptions) -> str | None:
    """The warning the log gets when the page is reachable beyond this machine without a login."""
    if serve.auth is not None or (is_loopback(serve.host) and not serve.share):
        return None
    where = "a public share link" if serve.share else f"host={serve.host}"
    return (f"{where} without {key('auth')}: anyone who reaches the page can use the model and upload files; set "
            f"{key('auth')}=FILE (user:password lines)")


def read_logins(path: str | None) -> list[tuple[str, str]] | None:
    """The ``user:password`` lines of the file ``auth`` (blank and # lines skipped); a bad line is refused in one
    line that names the file and line, never the password."""
    if path is None:
        return None
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise Invalid(f"{key('auth')}={path} cannot be read: {unreadable(error)}") from None
    logins = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.strip().partition(":")
        if not colon or not user or not password:
            raise Invalid(f"{key('auth')}={path} line {number} is not user:password (a user name, a colon, a "
                          "password)")
        logins.append((user, password))
    if not logins:
        raise Invalid(f"{key('auth')}={path} holds no user:password line")
    return logins


@contextlib.contextmanager
def upload_folder():
    """The app's own folder for Gradio's uploads and stored results (GRADIO_TEMP_DIR while it runs, inside the one
    the environment names, if any), removed with all it holds when the app stops."""
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="halton-app-", dir=parent or None))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if parent is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = parent
        shutil.rmtree(folder, ignore_errors=True)


def launch(page, serve: ServeOptions, port: int, **kwargs):
    """Serve ``page`` as ``serve`` says: the upload limit, the logins of ``auth``; ``kwargs``: more of Gradio's
    launch options (``prevent_thread_lock=True`` returns at once)."""
    warning = exposure_warning(serve)
    if warning:
        log.warning(warning)
    return page.queue().launch(server_name=serve.host, server_port=port, share=serve.share, show_error=True,
                               quiet=True, max_file_size=serve.max_upload_bytes, auth=read_logins(serve.auth),
                               css=PAGE_CSS, **kwargs)


def stop_on_sigterm(signum, frame) -> None:
    """SIGTERM stops the app as Ctrl-C does."""
    raise KeyboardInterrupt


def serve_until_stopped(page, serve: ServeOptions, port: int) -> None:
    """Serve ``page`` until Ctrl-C or SIGTERM (a normal stop: the server closes, exit code 0); a second signal
    during the stop is ignored, so that the upload folder is still removed."""
    try:
        launch(page, serve, port, prevent_thread_lock=True)
        while page.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        log.info("stopping the app (Ctrl-C or SIGTERM)")
    finally:
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, signal.SIG_IGN)
        page.close(verbose=False)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="app")
@entry_point
def main(cfg: DictConfig) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to the page, one line each
    serve = from_config(ServeOptions, cfg)
    read_logins(serve.auth)  # a bad file is refused before the model loads
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    with upload_folder():
        studio = Studio.from_config(cfg)
        page = build_page(studio, page_defaults(cfg, studio), str(cfg.name))
        port = serve.port or free_port(serve.host)
        log.info(f"serving {cfg.name} ({cfg.checkpoint}) on http://{serve.host}:{port}")
        serve_until_stopped(page, serve, port)


if __name__ == "__main__":
    if importlib.util.find_spec("gradio") is None:
        fail("the app needs gradio, an optional extra: pip install -e '.[app]'")
    run(main, "app")
