"""Evaluate a checkpoint: python evaluate.py -m scheduler=halton,confidence steps=8,16 (see conf/evaluate.yaml).
The code is halton/entrypoints/evaluate.py, which an installed package also runs as the command halton-evaluate."""

from halton.entrypoints.evaluate import cli

if __name__ == "__main__":
    cli()
