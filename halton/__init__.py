"""halton: train, sample and evaluate MaskGIT models with the Halton scheduler."""

from halton.help import register_help_resolver
from halton.options import register_schemas

__version__ = "0.1.0"

# conf/sampling and conf/model merge the option schemas (sampling/schema, model/schema): registered on import, so a
# config composes the same way from the entry points, Hydra's compose API and the tests.
register_schemas()
register_help_resolver()  # --help (conf/hydra/help/halton.yaml)


def __getattr__(name: str):
    """``halton.Pipeline``, imported when first used (``import halton`` stays light for the entry points' checks)."""
    if name in ("Pipeline", "PipelineOutput"):
        from halton import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'halton' has no attribute {name!r}")
