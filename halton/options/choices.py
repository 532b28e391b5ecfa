"""The choice lists of the entry points' options that no option object owns: precisions, accelerators, feature
extractors, reference sets, prompt sources and the text embeddings."""

PRECISIONS = ("auto", "fp32", "bf16")  # sample.py, evaluate.py, the app and extraction (torch autocast)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
TRAINER_PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true",
                      "bf16-true", "transformer-engine", "transformer-engine-float16")  # Lightning's
EXTRACTORS = ("inception", "digits")
REFERENCE_KINDS = ("digits", "folder", "webdataset", "file", "coco")
PROMPT_SOURCES = ("coco", "file", "digits")
PHRASINGS = ("seen", "unseen")
TEXT_EMBEDDINGS = ("online", "precompute")
SOURCE_FORMATS = ("auto", "imagefolder", "webdataset", "digits")
