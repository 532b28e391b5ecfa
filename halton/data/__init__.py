"""Data modules over token codes: the embedded digits in memory, and shards of codes (any image data set
extracted with ``python -m halton.data.extract``, the digits included)."""

from halton.data.digits import DigitsDataModule, load_digits_split
from halton.data.digits_shards import DigitsShardsDataModule
from halton.data.manifest import Manifest, ManifestMismatch, ShardRecord
from halton.data.memory import CodesDataset
from halton.data.shard_datamodule import CodeShardsDataModule
from halton.data.shard_stream import CodeShardStream

__all__ = ["CodeShardStream", "CodeShardsDataModule", "CodesDataset", "DigitsDataModule", "DigitsShardsDataModule",
           "Manifest", "ManifestMismatch", "ShardRecord", "load_digits_split"]
