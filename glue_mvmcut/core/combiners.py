"""How overlapping inputs make one mosaic pixel: the combiners of `~glue_mvmcut.core.combine`.

A combiner gets the inputs that cover a block of output pixels, aligned on the output grid, as
two ``(n, rows, cols)`` float32 stacks: SCI (NaN where that input has no data) and WHT (0 there),
and returns the block's SCI and WHT. Pixels no input observes (WHT ≤ 0, or SCI NaN) never take
part, and stay 0 in both outputs whatever the combiner.

==========  ==============================================  =====================================
name        SCI                                             WHT
==========  ==============================================  =====================================
``wmean``   WHT-weighted mean (the default)                 sum of the weights
``mean``    plain mean                                      sum of the weights
``median``  median (robust to one input's artefacts)        sum of the weights of the inputs there
``min``     smallest value                                  weight of the input that has it
``max``     largest value                                   weight of the input that has it
``first``   the first input in order with data there        its weight
``last``    the last input in order with data there         its weight
==========  ==============================================  =====================================

A callable ``f(sci, wht) -> (sci, wht)`` may stand for a name: it gets the stacks above (blocks of
at most a few hundred rows, so it must work pixel by pixel along the first axis) and returns two
``(rows, cols)`` arrays.
"""

from collections.abc import Callable

import numpy as np

__all__ = ["COMBINERS", "Combiner", "combiner_name", "stack_combiner", "describe"]

#: The combiners by name, and what their SCI is (for provenance and messages).
COMBINERS = {
    "wmean": "WHT-weighted mean",
    "mean": "mean",
    "median": "median",
    "min": "minimum",
    "max": "maximum",
    "first": "first input with data",
    "last": "last input with data",
}

Combiner = str | Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def combiner_name(combine: Combiner) -> str:
    """The name of ``combine`` as provenance records it (a callable's qualified name).

    Raises
    ------
    ValueError
        If ``combine`` is neither a known name nor a callable.
    """
    if callable(combine):
        return getattr(combine, "__qualname__", type(combine).__name__)
    if combine not in COMBINERS:
        raise ValueError(f"Unknown combiner {combine!r}: one of {', '.join(COMBINERS)}, or a callable.")
    return combine


def describe(combine: Combiner) -> str:
    """What a combiner's SCI is, in words: ``"median"``, ``"my_function()"``."""
    return f"{combiner_name(combine)}()" if callable(combine) else COMBINERS[combine]


def stack_combiner(combine: Combiner) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The function that combines aligned stacks for ``combine`` (a name but ``wmean``, which
    `~glue_mvmcut.core.combine` computes without stacking, or a callable)."""
    combiner_name(combine)
    if callable(combine):
        return combine
    return _PICKS.get(combine) or _REDUCTIONS[combine]


def _observed(sci: np.ndarray, wht: np.ndarray) -> np.ndarray:
    return (wht > 0) & ~np.isnan(sci)


def _reduction(reduce: Callable) -> Callable:
    """A combiner whose SCI reduces the observed values of each pixel and whose WHT sums
    their weights."""

    def combine(sci: np.ndarray, wht: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        observed = _observed(sci, wht)
        anywhere = observed.any(axis=0)
        out_sci = np.zeros(sci.shape[1:], np.float32)
        values = np.where(observed[:, anywhere], sci[:, anywhere], np.nan)
        out_sci[anywhere] = reduce(values, axis=0)  # no all-NaN column: no warning
        return out_sci, np.where(observed, wht, 0).sum(axis=0, dtype=np.float32)

    return combine


def _pick(index: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable:
    """A combiner that takes, at each pixel, the value and weight of one input:
    ``index(values, observed)`` says which (values: SCI, NaN where not observed)."""

    def combine(sci: np.ndarray, wht: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        observed = _observed(sci, wht)
        chosen = index(np.where(observed, sci, np.nan), observed)[None]
        anywhere = observed.any(axis=0)
        out_sci = np.where(anywhere, np.take_along_axis(sci, chosen, axis=0)[0], 0)
        out_wht = np.where(anywhere, np.take_along_axis(wht, chosen, axis=0)[0], 0)
        return out_sci.astype(np.float32), out_wht.astype(np.float32)

    return combine


_REDUCTIONS = {"mean": _reduction(np.nanmean), "median": _reduction(np.nanmedian)}
_PICKS = {
    "min": _pick(lambda values, observed: np.where(observed, values, np.inf).argmin(axis=0)),
    "max": _pick(lambda values, observed: np.where(observed, values, -np.inf).argmax(axis=0)),
    "first": _pick(lambda values, observed: observed.argmax(axis=0)),
    "last": _pick(lambda values, observed: len(observed) - 1 - observed[::-1].argmax(axis=0)),
}
