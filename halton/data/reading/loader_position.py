"""Where a resumable training loader stands in its epochs, and the state it leaves in checkpoints.

Both resumable loaders (:class:`~halton.data.reading.resumable_loader.ResumableLoader` over a data set in memory,
:class:`~halton.data.reading.epoch_loader.EpochDataLoader` over shards) keep their place with a
:class:`LoaderPosition` and save it as ``{"seed", "epoch", "samples"}``. ``samples`` counts the samples trained on
in that epoch over all ranks, so that a run may resume on another number of devices; the contract the loaders
follow is in :mod:`halton.data.reading.resumable_loader`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

STATE_KEYS = ("seed", "epoch", "samples")


class LoaderPosition:
    """The epoch a loader is iterating and how many of its batches this rank has handed out, counting those
    skipped on resume. ``written_by`` names the loader class in the message about a state it cannot read."""

    def __init__(self, written_by: str):
        self.written_by = written_by
        self.epoch = 0            # epoch of the current (or last) iteration
        self.handed_out = 0       # batches of that epoch handed out so far, the skipped ones included
        self.exhausted = False    # the iteration handed out its last batch

    def count(self, batches: Iterable[Any], epoch: int, skipped: int) -> Iterator[Any]:
        """Hand out ``batches`` of ``epoch``, which start after its first ``skipped`` batches, counting them."""
        self.epoch, self.handed_out, self.exhausted = epoch, skipped, False
        for batch in batches:
            self.handed_out += 1
            yield batch
        self.exhausted = True

    def state_dict(self, seed: int, batch_size: int, world_size: int, ahead: int = 0) -> dict[str, int]:
        """The checkpoint's state. ``ahead``: batches the Trainer fetched but has not trained on (one from a loader
        without a length, none from one with a length); nothing is ahead once the iteration is exhausted."""
        trained = self.handed_out if self.exhausted else max(self.handed_out - ahead, 0)
        return {"seed": seed, "epoch": self.epoch, "samples": trained * batch_size * world_size}

    def read_state(self, state: dict[str, int], batch_size: int, world_size: int) -> tuple[int, int, int]:
        """(seed, epoch, batches this rank has trained on in that epoch) of a checkpoint's state."""
        missing = set(STATE_KEYS) - set(state)
        if missing:
            raise ValueError(f"the data loader state in the checkpoint lacks {sorted(missing)}; allowed: a state "
                             f"written by {self.written_by}.state_dict")
        return int(state["seed"]), int(state["epoch"]), int(state["samples"]) // (batch_size * world_size)
