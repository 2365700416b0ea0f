"""Which requests fetch a set of byte spans of a file: spans joined where the gap between them
costs less than a request of their own, and batched into multi-range requests whose ``Range``
header and reply stay within bounds (`~glue_mvmcut.core.remote.RemoteFITS` sends them).
"""

import numpy as np

from .byteranges import digits

__all__ = ["merge_spans", "request_batches"]


def merge_spans(spans: np.ndarray, gap: int, stretch: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``spans`` (an (n, 2) array of start, stop) with overlapping ones and those less
    than ``gap`` bytes apart joined; a joined span ends where the next span starts in another
    ``stretch`` of the file (so that no reply grows past it).

    Returns the joined spans, an (m, 2) array, and where each one's spans begin in ``spans``
    (plus its length).
    """
    reach = np.maximum.accumulate(spans[:, 1])  # furthest byte of any span so far
    stretches = spans[:, 0] // stretch
    apart = (spans[1:, 0] - reach[:-1] > gap) | (stretches[1:] != stretches[:-1])
    first = np.flatnonzero(np.r_[True, apart])
    merged = np.column_stack([spans[first, 0], np.maximum.reduceat(spans[:, 1], first)])
    return merged, np.r_[first, len(spans)]


def request_batches(merged, *, several: bool, header_limit: int, stretch: int) -> list[np.ndarray]:
    """Indices into ``merged`` (an (n, 2) array of spans) in few batches, a request each, that
    keep each request's Range header within ``header_limit`` characters and its reply within
    ``stretch`` bytes (or one span), of about equal shares; one span each unless the server
    takes ``several`` ranges per request."""
    if not several or len(merged) == 1:
        return list(np.arange(len(merged)).reshape(-1, 1))
    bounds = np.array(merged, dtype=np.int64)
    sizes = bounds[:, 1] - bounds[:, 0]
    bounds[:, 1] -= 1  # "start-last,": each number's digits, a dash and a comma
    lengths = digits(bounds).sum(axis=1) + 2
    cuts = np.union1d(_even_cuts(lengths, header_limit), _even_cuts(sizes, stretch))
    return [batch for batch in np.split(np.arange(len(merged)), cuts) if batch.size]


def _even_cuts(weights: np.ndarray, budget: int) -> np.ndarray:
    """Where to cut ``weights`` into the fewest runs of about equal sums that each stay within
    ``budget`` (every weight alone if one leaves no room for another)."""
    room = budget - int(weights.max())
    if room <= 0:
        return np.arange(1, len(weights))
    total = int(weights.sum())
    count = -(-total // room)  # a run ends before its share is passed, so exceeds it by < max
    return np.searchsorted(np.cumsum(weights), total * np.arange(1, count) / count)
