"""Progress of a run, for whoever watches: flows report, the CLI draws a bar.

Deliberately tiny: a list of listeners called in-process. Prefect logs stay the record
of a run; this only feeds a terminal.
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str, int], None]
_listeners: list[Listener] = []


def listen(listener: Listener) -> Callable[[], None]:
    """Add a listener; returns the function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(what: str, count: int = 1) -> None:
    """Tell listeners that ``count`` more ``what`` (pages, records, batches) are done."""
    for listener in list(_listeners):
        listener(what, count)
