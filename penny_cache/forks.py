"""Objects that must forget their threads and identity in a forked child.

Pre-fork servers (gunicorn, uvicorn workers) import the app, then fork: a child inherits
the parent's counters, listener state and process id but none of its threads. Objects
registered here get ``after_fork()`` called in the child, before any of its code runs.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "track"]


class ForkAware(Protocol):
    def after_fork(self) -> None: ...


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def track(obj: ForkAware) -> None:
    """Call ``obj.after_fork()`` in every child forked while ``obj`` lives."""
    _live.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_live):
        obj.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
