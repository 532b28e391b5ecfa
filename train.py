"""Train a MaskGIT transformer: python train.py experiment=digits (see conf/train.yaml). The code is
halton/entrypoints/train.py, which an installed package also runs as the command halton-train."""

from halton.entrypoints.train import cli

if __name__ == "__main__":
    cli()
