"""Keep Python's cyclic garbage collector off the objects a flow run starts with.

A full collection walks every tracked object while every thread waits (the GIL). A flow
process holds hundreds of thousands of them before the run does anything (215,000 once
the flows are imported: Prefect, pandas, SQLAlchemy, pydantic), so each full pass stops
the pull and the writes for about 0.25 s on the 2-core reference machine: once in a
10,000-engagement run, four times in a 100,000 one (``make bench``: ``gc.gen2``).
Objects frozen with ``gc.freeze`` are not walked; refcounting still frees them as usual.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_guard = threading.Lock()
_runs = 0


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Freeze what exists when the (outermost) run starts; unfreeze when the last ends.

    Unfreezing matters where one process runs flow after flow (tests, ``serve``): cyclic
    garbage made before a freeze is only collected once it is unfrozen.
    """
    global _runs
    with _guard:
        if _runs == 0:
            gc.freeze()
        _runs += 1
    try:
        yield
    finally:
        with _guard:
            _runs -= 1
            if _runs == 0:
                gc.unfreeze()
