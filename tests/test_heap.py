"""The collector leaves the objects a run starts with alone, and only while runs go on."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import pytest

from socialcrm.heap import startup_objects_frozen


def test_what_exists_at_the_start_is_frozen_until_the_last_run_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted by calls, not by ``gc.get_freeze_count()`` alone: frozen objects that other
    threads free meanwhile leave the count (a clean-clone run saw it drop by 19)."""
    calls = {"freeze": 0, "unfreeze": 0}
    for name in calls:
        original = getattr(gc, name)

        def counted(name: str = name, original: Any = original) -> None:
            calls[name] += 1
            original()

        monkeypatch.setattr(gc, name, counted)
    assert gc.get_freeze_count() == 0
    with startup_objects_frozen():
        assert gc.get_freeze_count() > 0
        with startup_objects_frozen():  # a flow inside a flow, or two at once
            assert calls == {"freeze": 1, "unfreeze": 0}
        assert calls == {"freeze": 1, "unfreeze": 0}, "the inner run unfroze the outer one's"
        assert gc.get_freeze_count() > 0
    assert calls == {"freeze": 1, "unfreeze": 1}
    assert gc.get_freeze_count() == 0


def test_a_failing_run_unfreezes_too() -> None:
    with pytest.raises(RuntimeError), startup_objects_frozen():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0


def test_runs_on_two_threads_unfreeze_once_both_ended() -> None:
    inside, release = threading.Barrier(2), threading.Event()

    def run() -> None:
        with startup_objects_frozen():
            inside.wait()
            release.wait()

    other = threading.Thread(target=run)
    other.start()
    with startup_objects_frozen():
        inside.wait()
    assert gc.get_freeze_count() > 0, "the other run is still going"
    release.set()
    other.join()
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_made_before_a_run_is_collected_after_it() -> None:
    class Node:
        pass

    node = Node()
    node.self = node  # type: ignore[attr-defined]
    watched = weakref.ref(node)
    del node
    with startup_objects_frozen():
        gc.collect()
        assert watched() is not None, "frozen: not collected during the run"
    gc.collect()
    assert watched() is None
