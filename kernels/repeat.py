"""How many identical operations each one dispatched now stands for.

The CPU mode model (``adntn.timing``) prices a step by tracing it on meta tensors. A loop whose
iterations dispatch identical operations (the Kronecker sum's blocks of rows: 4,096 of them for a TTN
χ=13 root at 16,384 rows) need not run them all there: it runs one under :func:`repeated` and the
trace counts each operation that many times. On real data every iteration runs; nothing reads this.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_REPEAT: contextvars.ContextVar[int] = contextvars.ContextVar("kernels_repeat", default=1)


@contextlib.contextmanager
def repeated(times: int) -> Iterator[None]:
    """Operations dispatched inside stand for ``times`` identical ones each (nested: the product)."""
    token = _REPEAT.set(_REPEAT.get() * times)
    try:
        yield
    finally:
        _REPEAT.reset(token)


def repeat() -> int:
    """How many identical operations one dispatched now stands for (1 outside :func:`repeated`)."""
    return _REPEAT.get()
