"""Data over token codes, by direction::

    format/      the code-shard format, shared by both directions
      chunks           chunks of codes (and labels, keys, captions, text embeddings) in tar shards
      manifest         a shard folder's manifest: what the shards hold, checked against the config and the files
      tokenizer_spec   the tokenizer's identity recorded in the manifest
    writing/     images -> code shards
      sources          where images come from (ImageFolder, webdataset, the digits), cut into units of work
      extraction       units -> codes -> shards and manifest, in one process or with Lightning on every device
      extract_codes    the command: python -m halton.data.writing.extract_codes data=... split=... source.path=...
    reading/     code shards (or codes in memory) -> training batches
      partition        which samples each rank and worker reads in an epoch
      mixing           chunks -> shuffled batches, with numpy
      shard_stream     the IterableDataset of batches read from the shards
      epoch_loader     its DataLoader: epochs and exact mid-epoch resume
      shard_datamodule the LightningDataModule over shard folders (CodeShardsDataModule)
      codes_dataset    codes held in memory, a batch per index
      resumable_loader the resumable loader over codes in memory, and the contract of exact resume
      loader_position  the place both resumable loaders keep and save in checkpoints
    digits/      scikit-learn's handwritten digits, the embedded data set
      in_memory        the seeded split and the in-memory data module (with its digit classifier)
      captions         captions of the digits for text-to-image
      shards           the digits through the shard pipeline, extracted on first use

``python -m halton.data.extract`` (the command's first path) still runs ``extract_codes``. The names below load on
first use, so that the extraction command checks its command line before Lightning is imported."""

from importlib import import_module

_WHERE = {"DigitsDataModule": "digits.in_memory", "load_digits_split": "digits.in_memory",
          "DigitsShardsDataModule": "digits.shards", "Manifest": "format.manifest",
          "ManifestMismatch": "format.manifest", "ShardRecord": "format.manifest",
          "CodesDataset": "reading.codes_dataset", "CodeShardsDataModule": "reading.shard_datamodule",
          "CodeShardStream": "reading.shard_stream", "EpochDataLoader": "reading.epoch_loader",
          "ResumableLoader": "reading.resumable_loader"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'halton.data' has no attribute {name!r}")
    return getattr(import_module(f"halton.data.{_WHERE[name]}"), name)
