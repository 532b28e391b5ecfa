"""The extraction command's first path, kept for the command lines written with it: ``python -m
halton.data.extract ...`` runs ``python -m halton.data.writing.extract_codes`` with the same arguments."""

import runpy

if __name__ == "__main__":
    # run as __main__: the same command, with the same Hydra job name (extract_codes)
    runpy.run_module("halton.data.writing.extract_codes", run_name="__main__", alter_sys=True)
