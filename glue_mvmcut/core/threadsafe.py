"""A `warnings.catch_warnings` that threads can use at the same time, and process-wide
resources that forked children make anew.

``warnings.catch_warnings`` swaps the process-wide filter list (and ``showwarning``) on entry and
puts back what it saw on exit, so two threads inside such blocks at once can undo each other's
filters and record each other's warnings (Python < 3.14). The pipeline cuts several layers at
once and a batch runs many targets in threads, so every such block in this package takes one
lock. Keep the blocks short: never wait on the network inside one.

Thread pools are made once per process (`per_process`). A child forked from the process
(Linux's default for `multiprocessing`) inherits them but must not use them: a pool's threads do
not survive the fork, so work queued there would wait forever. (The I/O loop of ranged reads,
with its kept-alive connections, is renewed the same way in `~glue_mvmcut.core.transport`, which
also keeps the parent's loop from being closed or collected in the child.)
"""

import functools
import os
import threading
import warnings
from contextlib import contextmanager

__all__ = ["catch_warnings", "per_process"]

_LOCK = threading.RLock()


@contextmanager
def catch_warnings(**kwargs):
    """`warnings.catch_warnings` (same arguments) under a process-wide lock."""
    with _LOCK, warnings.catch_warnings(**kwargs) as caught:
        yield caught


def per_process(maxsize: int | None = None):
    """`functools.lru_cache` (``maxsize`` entries, no limit by default) that a forked child
    starts empty: for process-wide resources such as thread pools and sessions."""

    def decorate(function):
        cached = functools.lru_cache(maxsize=maxsize)(function)
        os.register_at_fork(after_in_child=cached.cache_clear)
        return cached

    return decorate
