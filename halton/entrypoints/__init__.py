"""The command-line entry points, installed as console scripts (``pyproject.toml``'s ``[project.scripts]``):
``halton-train``, ``halton-sample`` and ``halton-evaluate`` run this package's modules of those names (the clone's
``train.py``, ``sample.py`` and ``evaluate.py`` call the same code); ``halton-extract``, ``halton-export`` and
``halton-app`` run ``python -m halton.data.writing.extract_codes``, ``python -m halton.export`` and
``python -m halton.app`` exactly as those commands do."""

from __future__ import annotations

import runpy


def _run_module(name: str) -> None:
    runpy.run_module(name, run_name="__main__", alter_sys=True)


def extract() -> None:
    _run_module("halton.data.writing.extract_codes")


def export() -> None:
    _run_module("halton.export")


def app() -> None:
    _run_module("halton.app")
