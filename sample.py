"""Draw a labelled sample grid: python sample.py experiment=digits scheduler=halton steps=16 (see conf/sample.yaml).
The code is halton/entrypoints/sample.py, which an installed package also runs as the command halton-sample."""

from halton.entrypoints.sample import cli

if __name__ == "__main__":
    cli()
