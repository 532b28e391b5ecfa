"""Progress bars, one rule for every entry point: a live bar on a terminal; in redirected output (a log file,
SLURM's output) one plain line per refresh, never the carriage-return frames a live bar redraws itself with. The
bars of sampling, evaluation and extraction come from :func:`progress`; training's (Lightning's) writes through
:func:`bar_stream` (:class:`halton.training.StepProgressBar`)."""

from __future__ import annotations

import sys
from typing import IO

from tqdm.auto import tqdm

# Redirected output: the shortest time between two lines of a bar that counts by itself (tqdm's mininterval), so a
# long evaluation writes a line every half minute, and a short one none but its last.
LOG_INTERVAL_S = 30.0


def on_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class LogLines:
    """A stream for a progress bar whose output is not a terminal: each frame the bar draws (``\\r...``) becomes one
    line, the same frame twice is written once, and the blank frames that erase a bar are dropped."""

    def __init__(self, stream: IO):
        self.stream, self.last = stream, None

    def write(self, text: str) -> int:
        for frame in text.split("\r"):
            frame = frame.strip()
            if frame and frame != self.last:
                self.stream.write(frame + "\n")
                self.last = frame
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        return False


def bar_stream(stream: IO | None = None) -> IO:
    """Where a progress bar writes: ``stream`` (default stderr) itself on a terminal, else :class:`LogLines` on it."""
    stream = sys.stderr if stream is None else stream
    return stream if on_terminal(stream) else LogLines(stream)


def progress(iterable=None, *, stream: IO | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` under the rule above: on a terminal as tqdm draws it; redirected, one line per
    :data:`LOG_INTERVAL_S` at most, nothing for a bar done sooner, and the last line when the bar is kept
    (``leave=True``)."""
    stream = sys.stderr if stream is None else stream
    if not on_terminal(stream):  # nothing for a bar done within the interval
        kwargs = {"mininterval": LOG_INTERVAL_S, "delay": LOG_INTERVAL_S, **kwargs, "dynamic_ncols": False}
    return tqdm(iterable, file=bar_stream(stream), **kwargs)
