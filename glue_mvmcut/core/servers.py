"""What this process has learned about each server it reads layers from.

Servers and their files differ, so what a ranged read plans on is learned from replies rather
than assumed:

- how a server answers ``Range`` (`RANGE_KINDS`): several ranges in one reply, or one range
  per request only (the first of several, or the whole file to several, as object stores do),
  or no ``Range`` at all, when only whole-file downloads work (the first read of a server
  asks, `~glue_mvmcut.core.rangedfile.RangedFile`);
- how long the headers of its layers are: a cold cutout's first read then holds the primary and
  SCI headers whole, and the WHT header fetched with the pixels is guessed right (two round
  trips, where a wrong length costs one or two more);
- where a file's requests were redirected to (`location`), so that later ones go there at once;
- how long a round trip takes and how fast bytes come (`Server.saw_reply`): for a server that
  answers one range per request, whether joining two spans costs less than a request more;
- whether it answers requests pipelined on one connection (`Server.pipelines`,
  `~glue_mvmcut.core.pipelining`): then a request more costs the server's time for it, not a
  round trip.

Kept per server (scheme, host and port, after redirects) for the life of the process; a forked
child starts afresh.
"""

import os
import threading
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "RANGE_KINDS",
    "Server",
    "server_of",
    "location",
    "relocate",
    "forget_servers",
    "FIRST_READ",
    "MARGIN",
]

#: How a server answers ``Range`` requests: several ranges in one ``multipart/byteranges`` 206;
#: several ranges with the first only (206); several with the whole file (200, as object stores
#: do) but one range with a 206; ``Range`` ignored (200 and the whole file, always).
RANGE_KINDS = ("multipart", "first-range", "one-range", "no-range")

#: Bytes of a file's first read from a server not met before: a real MVM layer's primary and SCI
#: headers are ~980 cards (~80 KB); 128 KB holds ~1600, as a layer of ~60 inputs has. (More would
#: cost a small cutout more than its pixels: a 2" box is 20 KB a layer.)
FIRST_READ = 128 * 1024
#: Bytes read beyond the longest opening seen: ~144 cards, the keywords of ~5 more inputs than
#: the server's longest primary header so far.
MARGIN = 4 * 2880
#: Replies at least this long tell the server's throughput; until one has, these are assumed
#: (a modest link: 50 ms, 20 MB/s).
LARGE_REPLY = 128 * 1024
ASSUMED_ROUND_TRIP, ASSUMED_THROUGHPUT = 0.05, 20e6
#: The time between two replies of a pipeline, until one was measured (a server's time for a
#: request of a few kB with a few connections busy), and the least time to wait for the second
#: reply of a connection's first pipeline (a server that does not pipeline falls silent after
#: its first reply instead).
ASSUMED_PIPELINE_STEP, LEAST_PATIENCE = 2e-4, 1.0


@dataclass
class Server:
    """What replies from one server have shown (thread-safe).

    ``ranges``: one of `RANGE_KINDS`, None until a reply showed it; ``opening``: the most bytes
    seen before a layer's first data (its primary and SCI headers, for MVM);
    ``header_lengths``: by EXTNAME, the length in bytes (with padding) of the last such header
    read; ``round_trip``: the quickest reply seen, in seconds; ``throughput``: the fastest bytes
    per second a large reply came at beyond the round trip (the quickest one seen since: a
    cutout's first reply is its largest, and only the small ones after it tell how much of its
    time was the round trip); ``pipelines``: whether the server answers requests pipelined on
    one connection, None until replies showed it; ``pipeline_step``: the time between two
    replies of a pipeline of small replies, the latest measured (a server that fetches each
    range from elsewhere, as object stores do, takes milliseconds; a web server serving a file,
    microseconds); ``redirects_to``: the server its files were last redirected to, if any.
    """

    origin: str
    ranges: str | None = None
    opening: int | None = None
    header_lengths: dict[str, int] = field(default_factory=dict)
    round_trip: float | None = None
    throughput: float | None = None
    pipelines: bool | None = None
    pipeline_step: float | None = None
    redirects_to: "Server | None" = None
    _large: deque = field(default_factory=lambda: deque(maxlen=16), repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def known_ranges(self) -> str | None:
        """How the server answers ``Range``, or, if it sends its files elsewhere, how the
        server it sent them to last does (None if unknown)."""
        return self.ranges or (self.redirects_to.ranges if self.redirects_to is not None else None)

    @property
    def several_ranges(self) -> bool:
        """Whether to ask for several ranges in one request (until the server shows otherwise)."""
        return self.ranges in (None, "multipart")

    def saw_ranges(self, kind: str) -> None:
        """The server answered ``Range`` requests as ``kind`` (one of `RANGE_KINDS`) does."""
        with self._lock:
            self.ranges = kind

    def saw_reply(self, seconds: float, nbytes: int) -> None:
        """A reply of ``nbytes`` came ``seconds`` after its request left."""
        with self._lock:
            self.round_trip = seconds if self.round_trip is None else min(self.round_trip, seconds)
            if nbytes >= LARGE_REPLY:
                self._large.append((seconds, nbytes))
            rates = [size / (took - self.round_trip) for took, size in self._large if took > self.round_trip]
            if rates:
                self.throughput = max(rates)

    def saw_pipelining(self, works: bool) -> None:
        """Requests pipelined on one connection were answered (``works``), or only the first."""
        with self._lock:
            self.pipelines = works

    def saw_pipeline_step(self, seconds: float) -> None:
        """Replies of a pipeline came ``seconds`` apart (beyond the time their bytes took)."""
        with self._lock:
            self.pipeline_step = seconds

    def request_worth(self, concurrent: int, pipelined: bool = False) -> float:
        """Bytes that cost as much time as one more request among ``concurrent`` connections:
        a round trip's share, or ``pipelined``, a step of the pipeline's (`pipeline_step`, else
        `ASSUMED_PIPELINE_STEP`). A gap narrower than this is cheaper fetched than skipped."""
        with self._lock:
            round_trip = self.round_trip if self.round_trip is not None else ASSUMED_ROUND_TRIP
            step = self.pipeline_step if self.pipeline_step is not None else ASSUMED_PIPELINE_STEP
            throughput = self.throughput or ASSUMED_THROUGHPUT
        return (step if pipelined else round_trip) * throughput / max(concurrent, 1)

    def patience(self) -> float:
        """Seconds to wait for a second pipelined reply before taking the server for one that
        does not pipeline (until one of its pipelines was answered)."""
        with self._lock:
            return max(LEAST_PATIENCE, 10 * (self.round_trip or ASSUMED_ROUND_TRIP))

    def first_read(self) -> int:
        """Bytes to read first from one of this server's files: its headers up to the first data."""
        with self._lock:
            return FIRST_READ if self.opening is None else self.opening + MARGIN

    def saw_opening(self, nbytes: int) -> None:
        """A file of this server had ``nbytes`` of headers before its first data."""
        with self._lock:
            self.opening = max(self.opening or 0, nbytes)

    def saw_header(self, extname: str, length: int) -> None:
        """A file of this server had an ``extname`` header of ``length`` bytes."""
        with self._lock:
            self.header_lengths[extname] = length

    def header_length(self, extname: str) -> int | None:
        """The length of the last ``extname`` header seen, None if none was."""
        with self._lock:
            return self.header_lengths.get(extname)


_SERVERS: dict[str, Server] = {}
_MOVED: dict[str, str] = {}  # a file's URL -> where its requests were redirected
_LOCK = threading.Lock()


def server_of(url: str) -> Server:
    """What is known of the server of ``url`` (scheme, host and port)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    with _LOCK:
        return _SERVERS.setdefault(origin, Server(origin))


def location(url: str) -> str:
    """Where requests for ``url`` go: where they were last redirected to, else ``url``."""
    with _LOCK:
        return _MOVED.get(url, url)


def relocate(url: str, to: str | None) -> None:
    """Send later requests for ``url`` to ``to`` (None: to ``url`` itself again)."""
    with _LOCK:
        if to is None or to == url:
            _MOVED.pop(url, None)
        else:
            _MOVED[url] = to


def forget_servers() -> None:
    """Forget what this process learned about servers (e.g. to time a first contact)."""
    with _LOCK:
        _SERVERS.clear()
        _MOVED.clear()


def _renew_after_fork() -> None:
    """In a forked child: nothing learned, and a lock no thread of the parent held."""
    global _LOCK
    _LOCK = threading.Lock()
    _SERVERS.clear()
    _MOVED.clear()


os.register_at_fork(after_in_child=_renew_after_fork)
