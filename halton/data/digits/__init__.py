"""scikit-learn's handwritten digits, the embedded data set: held in memory (:mod:`~halton.data.digits.in_memory`),
captioned for text-to-image (:mod:`~halton.data.digits.captions`), or through the whole shard pipeline
(:mod:`~halton.data.digits.shards`)."""
