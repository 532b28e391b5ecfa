"""A Hydra callback that lets hydra-submitit-launcher send this project's task functions to SLURM jobs."""

from __future__ import annotations

import copyreg
import importlib
import sys
import types
from typing import Any

from hydra.experimental.callback import Callback


def _import_by_name(module: types.ModuleType):
    return importlib.import_module, (module.__name__,)


def pickle_module_subclasses_by_name() -> None:
    """cloudpickle sends a ``__main__`` task function by value, with the submodules its code names (``cfg.classes``
    names ``torch.classes``); it pickles plain modules by name but fails on ModuleType subclasses such as
    ``torch._classes._Classes`` ("cannot pickle '_Classes' object", cloudpipe/cloudpickle#405). Registering them
    with copyreg makes them travel by name too: the job imports them again."""
    for module in list(sys.modules.values()):
        kind = type(module)
        if kind is not types.ModuleType and isinstance(module, types.ModuleType):
            copyreg.pickle(kind, _import_by_name)


class PickleModulesByName(Callback):
    """Registered by conf/hydra/launcher/slurm.yaml: runs in the submitting process before the jobs are pickled."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        pickle_module_subclasses_by_name()
