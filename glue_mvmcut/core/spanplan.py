"""Which requests fetch a set of byte spans of a file: spans joined where the gap between them
costs less than a request of their own, and batched into multi-range requests whose ``Range``
header and reply stay within bounds (`~glue_mvmcut.core.rangedfile.RangedFile` sends them).

For a server that answers one range per request, every span left alone costs a request, and
every gap joined costs its bytes: `joins_within_budget` joins the narrowest gaps that are
cheaper than a request, as long as the bytes they add stay within a budget (none by default;
``conf.overfetch`` sets one for metered links).
"""

import numpy as np

from .byteranges import digits

__all__ = ["gaps_between", "joins_within_budget", "merge_spans", "request_batches"]


def gaps_between(spans: np.ndarray) -> np.ndarray:
    """Bytes between each of the sorted ``spans`` (an (n, 2) array of start, stop) and the
    next (0 or less where they touch or overlap): n - 1 of them."""
    reach = np.maximum.accumulate(spans[:, 1])  # furthest byte of any span so far
    return spans[1:, 0] - reach[:-1]


def joins_within_budget(gaps: np.ndarray, *, worth: float, budget: float) -> np.ndarray:
    """Which ``gaps`` to join (a boolean array): every one where spans touch, then the narrowest
    of those narrower than ``worth`` bytes while the bytes joined stay within ``budget``."""
    join = gaps <= 0
    candidates = np.flatnonzero((gaps > 0) & (gaps < worth))
    candidates = candidates[np.argsort(gaps[candidates], kind="stable")]
    affordable = np.searchsorted(np.cumsum(gaps[candidates]), budget, side="right")
    join[candidates[:affordable]] = True
    return join


def merge_spans(spans: np.ndarray, join: np.ndarray, stretch: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``spans`` (an (n, 2) array of start, stop) joined across the gaps ``join`` says
    (a boolean array over `gaps_between`); a joined span ends where the next span starts in
    another ``stretch`` of the file (so that no reply grows past it).

    Returns the joined spans, an (m, 2) array, and where each one's spans begin in ``spans``
    (plus its length).
    """
    stretches = spans[:, 0] // stretch
    apart = ~join | (stretches[1:] != stretches[:-1])
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
