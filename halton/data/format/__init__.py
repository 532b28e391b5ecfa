"""The code-shard format that extraction writes and the loaders read: chunks of codes in tar shards
(:mod:`~halton.data.format.chunks`), the folder's manifest (:mod:`~halton.data.format.manifest`), and the
tokenizer's identity recorded in it (:mod:`~halton.data.format.tokenizer_spec`)."""
