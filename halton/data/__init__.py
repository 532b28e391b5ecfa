"""Data modules over token codes: the embedded digits in memory, and shards of codes (any image data set
extracted with ``python -m halton.data.extract``, the digits included). The names load on first use, so that
``python -m halton.data.extract`` checks its command line before Lightning is imported."""

from importlib import import_module

_WHERE = {"DigitsDataModule": "digits", "load_digits_split": "digits", "DigitsShardsDataModule": "digits_shards",
          "Manifest": "manifest", "ManifestMismatch": "manifest", "ShardRecord": "manifest", "CodesDataset": "memory",
          "CodeShardsDataModule": "shard_datamodule", "CodeShardStream": "shard_stream"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'halton.data' has no attribute {name!r}")
    return getattr(import_module(f"halton.data.{_WHERE[name]}"), name)
