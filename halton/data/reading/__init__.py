"""The read path: the shards' samples planned over ranks and workers (:mod:`~halton.data.reading.partition`), mixed
into batches (:mod:`~halton.data.reading.mixing`) by a stream (:mod:`~halton.data.reading.shard_stream`) under a
resumable loader (:mod:`~halton.data.reading.epoch_loader`) and a data module
(:mod:`~halton.data.reading.shard_datamodule`); codes held in memory (:mod:`~halton.data.reading.codes_dataset`)
under the other resumable loader (:mod:`~halton.data.reading.resumable_loader`); the place both loaders save
(:mod:`~halton.data.reading.loader_position`)."""
