"""The write path: image sources cut into units of work (:mod:`~halton.data.writing.sources`), their extraction
into code shards (:mod:`~halton.data.writing.extraction`) and the command that runs it
(:mod:`~halton.data.writing.extract_codes`)."""
