"""How long a batch takes to plan its MAST queries: grouping targets spread over the sky.

Prints seconds for 1,000, 10,000 and 100,000 targets (uniform over the sphere, two selections
of filters), and the number of groups.

    python benchmarks/bench_grouping.py
"""

import time

import numpy as np

from glue_mvmcut.core.batch import group_targets
from glue_mvmcut.core.targets import Target


def targets(n: int, seed: int = 1) -> list[Target]:
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return [
        Target(k, f"t{k}", "", None, float(ra[k]), float(dec[k]), filters=("f814w",) if k % 2 else None)
        for k in range(n)
    ]


def main() -> None:
    print(f"{'targets':>8} {'groups':>8} {'seconds':>8}")
    for n in (1_000, 10_000, 100_000):
        plan = targets(n)
        started = time.perf_counter()
        groups = group_targets(plan)
        print(f"{n:>8} {len(groups):>8} {time.perf_counter() - started:>8.3f}")


if __name__ == "__main__":
    main()
