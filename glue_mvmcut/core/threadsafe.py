"""A `warnings.catch_warnings` that threads can use at the same time.

``warnings.catch_warnings`` swaps the process-wide filter list (and ``showwarning``) on entry and
puts back what it saw on exit, so two threads inside such blocks at once can undo each other's
filters and record each other's warnings (Python < 3.14). The pipeline cuts several layers at
once and a batch runs many targets in threads, so every such block in this package takes one
lock. Keep the blocks short: never wait on the network inside one.
"""

import threading
import warnings
from contextlib import contextmanager

__all__ = ["catch_warnings"]

_LOCK = threading.RLock()


@contextmanager
def catch_warnings(**kwargs):
    """`warnings.catch_warnings` (same arguments) under a process-wide lock."""
    with _LOCK, warnings.catch_warnings(**kwargs) as caught:
        yield caught
