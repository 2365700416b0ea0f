"""Running one call in several threads at once, as several users or processes would."""

import threading


def at_once(call, count: int, timeout: float = 300) -> tuple[list, list[BaseException]]:
    """Run ``call()`` in ``count`` threads started together: (what they returned, what they raised)."""
    results, errors = [], []

    def run():
        try:
            results.append(call())
        except Exception as exc:  # the caller asserts there are none, and sees which
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results, errors
