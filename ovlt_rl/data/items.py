"""Encoded dataset items for the driver's loops: cached, and with rows that fail to decode skipped.

A dataset's construction checks every image cheaply (header and structure, no pixel decode); an
image can still fail to decode when its item is first built (a broken compressed stream, e.g.
"broken data stream"). Such a row is a counted skip, not a crash: the dataset counts it as
decode_error against the same `data.max_bad_fraction` of its file (stopping the run with
DatasetError past it) and logs it with its file and row, once.

`batch(indices)` then refills the batch: a failed row is replaced by the next row in dataset order
(i+1, i+2, ..., wrapping) that decodes and is not in the batch already. The batch keeps its size,
so the driver deals every policy rank the same number of samples as always (FSDP collectives need
equal forwards per rank), and the replacement depends only on the indices and on which rows fail,
which the data alone decides: a resume from a checkpoint sees the same batches. The price is that
the replacement row is seen once more in that epoch. `present(indices)` (validation, held-out loss)
drops failed rows instead, since nothing there needs a fixed size.

Items are cached after their first use: they are deterministic (no augmentation), and re-running the
processor on every epoch dominated small-model steps.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from ovlt_rl.data.images import ImageError


class Items:
    def __init__(self, dataset):
        self.dataset = dataset
        self._items: dict[int, dict[str, Any]] = {}
        self.failed: set[int] = set()  # indices whose images failed to decode

    @property
    def skipped(self) -> Counter:
        return self.dataset.skipped

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, i: int) -> dict[str, Any] | None:
        """Item `i`, or None if its images fail to decode (counted and logged the first time)."""
        if i in self.failed:
            return None
        if i not in self._items:
            try:
                self._items[i] = self.dataset[i]
            except ImageError as e:
                self.failed.add(i)
                self.dataset.record_decode_failure(i, e)  # raises DatasetError past max_bad_fraction
                return None
        return self._items[i]

    def batch(self, indices: Sequence[int], within: int | None = None) -> tuple[list[dict[str, Any]], list[int]]:
        """(items, the indices used): every index that fails replaced as described above, by a row
        below `within` (default: any; SFT keeps its held-out rows out of training this way)."""
        n = len(self) if within is None else within
        taken = set(indices)
        used: list[int] = []
        items: list[dict[str, Any]] = []
        for i in indices:
            for j in _candidates(i, n, taken):
                if (item := self.get(j)) is not None:
                    break
            else:
                raise ImageError(f"no row left to replace {self.dataset.source(i)}, whose image failed to decode")
            taken.add(j)
            used.append(j)
            items.append(item)
        return items, used

    def present(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The items of `indices` whose images decode (the others are counted, logged and left out)."""
        return [item for i in indices if (item := self.get(i)) is not None]

    # Resumes: the rows found broken before the checkpoint still count against max_bad_fraction.
    def state_dict(self) -> list[int]:
        return sorted(self.failed)

    def load_state_dict(self, failed: Sequence[int]) -> None:
        for i in failed:
            if i not in self.failed:
                self.failed.add(i)
                self.dataset.record_decode_failure(i, ImageError("failed to decode before the checkpoint"))


def _candidates(i: int, n: int, taken: set[int]):
    """Row i itself, then the rows after it (wrapping below n) that the batch does not hold yet."""
    yield i
    for k in range(1, n):
        if (j := (i + k) % n) not in taken:
            yield j
