"""Data modules over token codes."""

from halton.data.digits import DigitsDataModule, load_digits_split
from halton.data.memory import CodesDataset

__all__ = ["CodesDataset", "DigitsDataModule", "load_digits_split"]
