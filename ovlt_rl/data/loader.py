"""A resumable, deterministic order over dataset indices: `EpochIterator`.

How it works: epoch e visits the indices in the order of a permutation drawn from a numpy
generator seeded with (seed, e) (or in order when shuffle=False), cut into batches of `batch_size`.
The iterator runs epoch after epoch without end; the caller decides when to stop. Its state is
(epoch, position), where position is the number of batches of that epoch already handed out; right
after the last batch of an epoch the state moves to (epoch + 1, 0), so a checkpoint taken there
resumes with the next epoch's first batch: an epoch boundary never yields an empty batch or a
zero-step epoch. `load_state_dict` refuses a state saved for another dataset size, batch size,
seed or mode, since resuming with it would silently change the data order.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np


class EpochIterator:
    def __init__(self, n_items: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if drop_last and n_items < batch_size:
            raise ValueError(
                f"{n_items} items cannot fill one batch of {batch_size} with drop_last=True: every epoch would have zero steps"
            )
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.position = 0, 0
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.n_items // self.batch_size
        return -(-self.n_items // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The index order of `epoch` (cached for the current one)."""
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
            else:
                self._order = np.arange(self.n_items)
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        start = self.position * self.batch_size
        batch = self.order(self.epoch)[start : start + self.batch_size].tolist()
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "n_items": self.n_items,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("n_items", "batch_size", "seed", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: the saved data order has {key}={state[key]!r} but this run has "
                    f"{key}={getattr(self, key)!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"cannot resume: epoch {epoch}, position {position} out of range "
                             f"({self.batches_per_epoch} batches per epoch)")
        self.epoch, self.position = epoch, position
