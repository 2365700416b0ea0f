"""What bounds a reply: how long it may take, and what it may hold.

Nothing a server sends may hold a run for ever or fill the memory: a request may take
``conf.timeout`` s plus a second per ``conf.min_rate`` kB it brings (`Pace`, `TooSlowError`
beyond), a MAST query ``conf.query_timeout`` s in all (`query_deadline`), and a body comes as
sent: a ``Content-Encoding`` that was not asked for is refused (`check_encoding`,
`ReplyRefused`), never inflated. `read_body` reads a requests body under those rules;
`~glue_mvmcut.core.transport` applies them to every request.
"""

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import requests
import urllib3

from .config import conf
from .errors import ArchiveError

__all__ = ["TooSlowError", "ReplyRefused", "Pace", "query_deadline", "check_encoding", "read_body"]


class TooSlowError(ArchiveError):
    """A server sent fewer bytes than ``conf.min_rate`` allows (or a query outlasted
    ``conf.query_timeout``)."""


class ReplyRefused(ArchiveError):
    """A reply that is not what was asked for: longer than the ranges asked, or encoded
    (``Content-Encoding``) although ``identity`` was asked."""


class Pace:
    """The floor on one transfer's speed: from its making, it may take ``conf.timeout`` s plus
    one second per ``conf.min_rate`` kB received, and never go past the thread's
    `query_deadline`.

    The rule needs no size in advance, so it bounds a trickle of bytes (1 byte/s is stopped
    after about ``conf.timeout`` s) as well as a stall, while a slow but honest link goes on.
    """

    def __init__(self):
        self.started = time.monotonic()
        self.received = 0
        self.until = getattr(_deadline, "until", None)

    @staticmethod
    def allowance(nbytes: int) -> float:
        """Seconds a transfer of ``nbytes`` may take."""
        return float(conf.timeout) + nbytes / (float(conf.min_rate) * 1000)

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` more received; `TooSlowError` if the transfer is now too slow."""
        self.received += nbytes
        now = time.monotonic()
        if now > self.started + self.allowance(self.received) or (
            self.until is not None and now > self.until
        ):
            raise self.too_slow()

    def too_slow(self) -> TooSlowError:
        """The error that says how slow the transfer was (or that the query's deadline passed)."""
        seconds = time.monotonic() - self.started
        if self.until is not None and time.monotonic() > self.until:
            return TooSlowError(
                f"not done within glue_mvmcut.conf.query_timeout = {conf.query_timeout} s. Try again "
                "later, or raise it."
            )
        return TooSlowError(
            f"{self.received} bytes in {seconds:.0f} s, slower than glue_mvmcut.conf.min_rate = "
            f"{conf.min_rate} kB/s: stopped. Try again later, or lower min_rate for a slow link."
        )


_deadline = threading.local()  # ``until``: the `query_deadline` of the thread, if any


@contextmanager
def query_deadline(seconds: float) -> Iterator[None]:
    """Every request this thread makes in the block ends within ``seconds`` from now (`Pace`)."""
    before = getattr(_deadline, "until", None)
    _deadline.until = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.until = before


def check_encoding(headers: Mapping[str, str], accepted: str) -> None:
    """Refuse a reply whose ``Content-Encoding`` (in its ``headers``) is none of ``accepted``
    (the request's ``Accept-Encoding``): a body is never inflated unasked."""
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "") and encoding not in accepted.lower():
        raise ReplyRefused(f"the reply is encoded ({encoding}) although {accepted} was asked: refused")


def read_body(response: requests.Response, pace: Pace, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """The body of a streamed requests ``response`` as it comes, at the pace ``pace`` allows,
    decoded if its ``Content-Encoding`` is one the request accepted, refused if another.

    Reads with urllib3's ``read1``, which returns whatever bytes have come: requests'
    ``iter_content`` reads whole chunks (64 KB take 18 hours at 1 byte/s, with no silence long
    enough for the socket's timeout). Its errors become requests' as ``iter_content`` makes them.
    """
    check_encoding(response.headers, response.request.headers.get("Accept-Encoding", "identity"))
    try:
        while block := response.raw.read1(chunk, decode_content=True):
            pace.add(len(block))
            yield block
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
