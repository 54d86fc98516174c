"""Calibration data: what every method that looks at real activations is given.

Modelled on NNCF's ``Dataset(data_source, transform_func)``: a loader plus how to get
the model's input out of one of its batches.  PTQ ranges (``compress.int8``), fixed-point
formats, low-rank responses, the int8 targets and the parity checks of ``deploy`` all
read "the first N batches" through one :class:`Calibration`::

    calib = Calibration(train_loader, limit=8)       # the first 8 batches' inputs
    for x in calib.batches(): ...
    calib.samples                                    # samples in those batches

The batches drawn are kept: a shuffled loader gives another order on every pass, and a
method that reads its calibration data twice (prepare on the first batch, then
calibrate on all) must see the same samples both times.  A ``Calibration`` is also a
sequence of its input tensors, so code that takes a list of batches takes it as is.
Depends on torch only, so that compress, targets and deploy may all import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from tinytamer.errors import DataError


def model_input(batch: Any) -> Any:
    """The input of a batch: the first item of an ``(inputs, targets)`` pair, else the batch."""
    return batch[0] if isinstance(batch, list | tuple) else batch


class Calibration(Sequence[Any]):
    """The inputs of the first ``limit`` batches of ``data`` (all of them when ``limit`` is None).

    ``transform`` gets the model input from one batch (default: :func:`model_input`);
    ``what`` names the data in error messages.  The data is read lazily, once.
    """

    def __init__(
        self,
        data: Iterable[Any],
        transform: Callable[[Any], Any] = model_input,
        *,
        limit: int | None = None,
        what: str = "calibration",
    ) -> None:
        if limit is not None:
            _check_count(limit, what)
        self._source: Iterator[Any] | None = iter(data)
        self._transform = transform
        self._inputs: list[Any] = []
        self.limit = limit
        self.what = what

    def _kept(self, n: int | None = None) -> list[Any]:
        """The first ``n`` inputs (default: up to ``limit``), drawn from the source as needed;
        data that holds no batch at all is refused."""
        want = self.limit if n is None else n if self.limit is None else min(n, self.limit)
        missing = None if want is None else want - len(self._inputs)
        if self._source is not None and (missing is None or missing > 0):
            for batch in islice(self._source, missing):
                self._inputs.append(self._transform(batch))
            if want is None or len(self._inputs) < want:
                self._source = None  # exhausted
        if not self._inputs:
            raise DataError(f"{self.what}: no calibration batches were given (the data is empty)")
        return self._inputs[:want]

    def batches(self, n: int | None = None) -> Iterator[Any]:
        """The inputs of the first ``n`` batches (default: all up to ``limit``); ``n <= 0``
        and data that holds no batch are refused."""
        if n is not None:
            _check_count(n, self.what)
        return iter(self._kept(n))

    @property
    def samples(self) -> int:
        """Samples in the batches (the first dimension of each input, or of its first tensor)."""
        total = 0
        for x in self.batches():
            while isinstance(x, list | tuple):  # a model with several inputs
                x = x[0]
            total += len(x)
        return total

    def __iter__(self) -> Iterator[Any]:
        return self.batches()

    def __len__(self) -> int:
        return len(self._kept())

    def __getitem__(self, i: int | slice) -> Any:
        return self._kept()[i]

    def __repr__(self) -> str:
        drawn = "unread" if self._source is not None and not self._inputs else f"{len(self._inputs)} batches"
        return f"Calibration({self.what!r}, limit={self.limit}, {drawn})"


def as_calibration(
    data: Calibration | Iterable[Any], num_batches: int | None = None, *, what: str = "calibration"
) -> Calibration:
    """``data`` as a Calibration: kept as it is, or built from tensors or ``(x, y)`` batches;
    ``num_batches`` (when given) keeps the first that many."""
    if isinstance(data, Calibration):
        return data if num_batches is None else Calibration(data.batches(num_batches), what=data.what)
    return Calibration(data, limit=num_batches, what=what)


def _check_count(n: Any, what: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise DataError(f"{what}: the number of calibration batches must be a whole number >= 1, got {n!r}")
