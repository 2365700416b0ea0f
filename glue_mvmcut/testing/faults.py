"""Fault switches for the stand-in MAST server: failures, drops, stalls, garbled replies,
redirects, and every way a server can answer ``Range`` requests."""

import threading
from contextlib import contextmanager

from ..core.servers import RANGE_KINDS

__all__ = ["GARBLE_KINDS", "PIPELINING_KINDS", "RANGE_KINDS", "REDIRECT_STATUSES", "Faults"]

GARBLE_KINDS = ("part-length", "no-content-range", "no-boundary")
#: How a server takes requests sent on a connection before the previous reply (HTTP/1.1
#: pipelining): answers them in order; answers the first and closes the connection
#: (``Connection: close``); or loses them, as a server or middlebox that reads one request at a
#: time and throws away what came with it.
PIPELINING_KINDS = ("answers", "closes", "loses")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class _OneOf:
    """A switch that takes one of ``choices``: another value is refused with ``ValueError``
    (``refusal`` formatted with it, and the choices named)."""

    def __init__(self, choices: tuple, refusal: str):
        self.choices, self.refusal = choices, refusal

    def __set_name__(self, owner, name: str) -> None:
        self.attribute = "_" + name

    def __get__(self, faults, owner=None):
        return self if faults is None else getattr(faults, self.attribute)

    def __set__(self, faults, value) -> None:
        if value not in self.choices:
            raise ValueError(f"{self.refusal.format(value)}; one of {self.choices}")
        setattr(faults, self.attribute, value)


class Faults:
    """Fault switches. Each counted fault applies to the next ``count`` matching requests.

    ``scope`` is ``"download"`` (HEAD/GET of files), ``"query"`` (invoke and columnsconfig)
    or ``"any"``. Plain switches: ``latency`` (seconds added to every request),
    ``ranges`` (how ``Range`` requests are answered, one of
    `~glue_mvmcut.core.servers.RANGE_KINDS`),
    ``redirect_to`` (a server's URL: file requests are answered ``redirect_status`` with the
    same path and query there, as MAST sends some downloads to cloud storage),
    ``max_range_header`` (a ``Range`` header longer than this many characters is refused with
    HTTP 400, as Apache and nginx refuse header fields over 8 KB; 0: no limit),
    ``executing`` (number of ``EXECUTING`` replies owed before answering queries),
    ``hostile_names`` (True: list skycell products under names that try to leave a folder),
    ``missing_columns`` (names of columns left out of the portal's table replies),
    ``content_length`` (False: file replies, HEAD's too, say no Content-Length; a GET's body ends
    with its connection, as MAST's files sometimes come, astroquery #3290),
    ``announced_size`` (bytes a HEAD reply says a file has, whatever it has: a server that lies),
    ``content_encoding`` (``"gzip"``: file bodies come gzip-compressed, whatever was accepted),
    ``extra_bytes`` (206 replies carry this many bytes more than the ranges asked),
    ``pipelining`` (what becomes of requests sent before the previous reply, one of
    `PIPELINING_KINDS`).

    `gather` holds file requests until requests for several files are under way at once, and
    ``most_files_at_once`` tells how many files had requests under way together at most: what
    a client reads concurrently, told without timing anything.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._files_changed = threading.Condition()
        self._over = threading.Event()  # set by reset: the stalls under way end
        self.reset()

    def reset(self) -> None:
        """Switch every fault off; stalls, latency (`pause`) and requests held by `gather` under
        way end now."""
        ended, self._over = self._over, threading.Event()
        ended.set()
        with self._lock:
            self._pending: list[dict] = []
            self.latency = 0.0
            self.ranges = "multipart"
            self.redirect_to: str | None = None
            self.redirect_status = 302
            self.max_range_header = 0
            self.executing = 0
            self.hostile_names = False
            self.missing_columns: set[str] = set()
            self.content_length = True
            self.announced_size: int | None = None
            self.content_encoding: str | None = None
            self.extra_bytes = 0
            self.pipelining = "answers"
        with self._files_changed:  # requests under way count no more (as in reset_stats)
            self._gather = 0
            self._under_way: dict[str | None, int] = {}  # file -> its requests being answered
            self.most_files_at_once = 0
            self._files_changed.notify_all()  # held requests: nothing to gather any more

    ranges = _OneOf(RANGE_KINDS, "Unknown range kind {!r}")
    pipelining = _OneOf(PIPELINING_KINDS, "Unknown pipelining kind {!r}")
    redirect_status = _OneOf(REDIRECT_STATUSES, "{} is not a redirect")

    def fail(self, status: int = 503, count: int = 1, scope: str = "any") -> None:
        """Answer the next ``count`` requests with HTTP ``status``."""
        self._add("fail", count, scope, status=status)

    def drop(self, after_bytes: int, count: int = 1) -> None:
        """Close the connection after ``after_bytes`` of body on the next ``count`` file GETs."""
        self._add("drop", count, "download", after_bytes=after_bytes)

    def garble(self, kind: str, count: int = 1) -> None:
        """Garble the multi-range replies of the next ``count`` file GETs: ``"part-length"`` (the
        first part's Content-Range claims a byte more than the part holds), ``"no-content-range"``
        (the first part has none) or ``"no-boundary"`` (the Content-Type names no boundary)."""
        if kind not in GARBLE_KINDS:
            raise ValueError(f"Unknown garble kind {kind!r}; one of {GARBLE_KINDS}")
        self._add("garble", count, "download", garble=kind)

    def stall(self, seconds: float, count: int = 1, scope: str = "any", after_bytes: int = 0) -> None:
        """Go silent for ``seconds`` (after the headers and ``after_bytes`` of body for file GETs)."""
        self._add("stall", count, scope, seconds=seconds, after_bytes=after_bytes)

    def trickle(self, rate: float, count: int = 1, scope: str = "any") -> None:
        """Send the bodies of the next ``count`` replies at ``rate`` bytes per second: a server
        that never falls silent but hardly moves."""
        self._add("trickle", count, scope, rate=rate)

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` (a stall, the latency), or until the faults are reset: a test's
        stalls end with it, and never hold the next test's requests."""
        self._over.wait(seconds)

    def gather(self, files: int) -> None:
        """Answer no file request until requests for ``files`` different files are under way
        together (after that, answer as usual): only a client reading that many files at once
        gets its replies (another waits until its timeout)."""
        with self._files_changed:
            self._gather = files

    def file_started(self, file: str | None, hold: bool = True):
        """A request for ``file`` is being answered: counts the files under way, and, if
        ``hold``, holds the request while `gather` asks for more. Returns a function to call
        just before the reply's last bytes are sent, when the request stops counting (calls
        after the first do nothing): a client that asks for another file only once a reply is
        whole is never seen asking for two at once, however soon after those bytes it asks."""
        with self._files_changed:
            under_way = self._under_way  # a reset meanwhile starts another count
            under_way[file] = under_way.get(file, 0) + 1
            self.most_files_at_once = max(self.most_files_at_once, len(under_way))
            self._files_changed.notify_all()
            if self._gather and hold:
                self._files_changed.wait_for(lambda: len(self._under_way) >= self._gather, timeout=60)
                self._gather = 0  # gathered: the rest as usual
        counted = True

        def answered():
            nonlocal counted
            with self._files_changed:
                if counted:
                    counted = False
                    if under_way[file] > 1:
                        under_way[file] -= 1
                    else:
                        del under_way[file]

        return answered

    @contextmanager
    def file_request(self, file: str | None):
        """Around the answer to one request for ``file`` (`file_started`); yields the function
        to call before the reply's last bytes, called at the end if not before."""
        answered = self.file_started(file)
        try:
            yield answered
        finally:
            answered()

    def plain_download(self) -> bool:
        """Whether a file request now would be answered with no fault but the latency and the
        switches of what a reply holds (ranges, redirects, sizes, encodings): no failure, drop,
        stall, trickle or garbling owed, no `gather`, pipelined requests answered and every
        reply's length announced."""
        with self._lock:
            owed = any(f["scope"] in ("any", "download") for f in self._pending)
        return not owed and not self._gather and self.pipelining == "answers" and self.content_length

    def _add(self, kind, count, scope, **params):
        if scope not in ("any", "download", "query"):
            raise ValueError(f"Unknown fault scope {scope!r}")
        with self._lock:
            self._pending.append({"kind": kind, "count": count, "scope": scope, **params})

    def take(self, scope: str, method: str) -> list[dict]:
        """Consume the faults that apply to one request of ``scope``."""
        taken = []
        with self._lock:
            for fault in self._pending:
                if fault["count"] <= 0 or fault["scope"] not in ("any", scope):
                    continue
                kind = fault["kind"]
                mid_body = kind in ("drop", "trickle") or (kind == "stall" and fault["after_bytes"])
                if mid_body and method == "HEAD":  # no body to break, stall or trickle in
                    continue
                fault["count"] -= 1
                taken.append(fault)
            self._pending = [f for f in self._pending if f["count"] > 0]
        return taken

    def take_executing(self) -> bool:
        """True (and one fewer left) while ``EXECUTING`` replies are still owed."""
        with self._lock:
            if self.executing > 0:
                self.executing -= 1
                return True
            return False
