"""The one HTTP layer: sessions, timeouts, retries, error messages, and the I/O loop of ranged reads.

Everything in the package that talks HTTP stands on this module:

- MAST queries, name resolution and whole-file downloads use requests sessions
  (`http_session`, or astroquery's own session given the same adapter by `with_timeouts`): every
  request times out after ``conf.timeout`` s of silence and is retried by urllib3 on HTTP 5xx and
  failed connections, with the budget of `Retries`.
- Ranged reads use aiohttp (`get_range`) on one event loop thread per process (`run`, `submit`),
  whose kept-alive connections serve every layer and cutout (the pipelines of
  `~glue_mvmcut.core.pipelining` run on it too); `Urgent` and `after_urgent_work` order the
  work on it.
- Transfers that retry by themselves (a ranged read, a download resuming where its body broke
  off) count their failures with `Retries`; `RETRYABLE` names the errors worth another attempt.
- `transport_errors` turns any transport failure, of requests or of aiohttp, into an
  `~glue_mvmcut.core.errors.ArchiveError` that names the server and what to do.
- Every request keeps to `~glue_mvmcut.core.limits`: it may take ``conf.timeout`` s plus a
  second per ``conf.min_rate`` kB it brings, a MAST query ``conf.query_timeout`` s in all, and
  bodies come as sent (an encoding not asked for is refused); a ranged reply brings at most
  what was asked (`~glue_mvmcut.core.limits.ReplyRefused` otherwise).
- Both follow at most `MAX_REDIRECTS` redirects (MAST sends some files to cloud storage),
  keeping the ``Range`` header, to http(s) addresses only (`RedirectError` otherwise).

Why aiohttp for ranged reads: a cold cutout is two round trips in sequence (headers, then rows),
and everything between them and after them is Python competing for one GIL. With requests, each
request costs ~1 ms of CPU (``http.client`` parses reply headers with the ``email`` package) and
the replies of concurrent requests arrive on as many threads, which then take turns for the GIL;
aiohttp parses HTTP in C and one thread handles every reply as it comes. Measured for the
network pattern alone (two layers: headers, then three multi-range requests each, stand-in with
20 ms latency): 51-52 ms with requests and threads, 46-47 ms with aiohttp.
"""

import asyncio
import atexit
import concurrent.futures
import functools
import io
import logging
import os
import re
import threading
import urllib.request
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import requests
import urllib3
from urllib3.util.retry import Retry

from .config import conf
from .endpoints import astroquery_config_file, server_url
from .errors import ArchiveError
from .limits import Pace, ReplyRefused, TooSlowError, check_encoding, read_body

__all__ = [
    "TransferStats",
    "HTTPStatusError",
    "ServerError",
    "RETRYABLE",
    "MAX_REDIRECTS",
    "RedirectError",
    "Retries",
    "transport_errors",
    "http_session",
    "with_timeouts",
    "Reply",
    "get_range",
    "proxy_of",
    "run",
    "submit",
    "Urgent",
    "after_urgent_work",
]

log = logging.getLogger(__name__)


@dataclass
class TransferStats:
    """Bytes and HTTP requests spent on the archive (safe to share between threads)."""

    bytes: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, nbytes: int = 0, requests: int = 0) -> None:
        """Count ``nbytes`` more body bytes and ``requests`` more requests."""
        with self._lock:
            self.bytes += nbytes
            self.requests += requests


# -- errors ----------------------------------------------------------------------------------------
class HTTPStatusError(Exception):
    """A server answered with an HTTP error status (aiohttp's replies are checked by hand)."""

    def __init__(self, status: int, reason: str, url: str):
        super().__init__(f"{status} {reason} for url: {url}")
        self.status = status


class ServerError(HTTPStatusError):
    """HTTP 5xx: worth asking again."""


class RedirectError(ArchiveError):
    """A server redirected a request where it is not followed: more than `MAX_REDIRECTS` times
    (a loop, likely), or to an address that is not http(s)."""


#: Redirects followed for one request; one more is taken for a loop.
MAX_REDIRECTS = 5
#: What a multi-range reply may hold beyond the bytes asked: each part's head (~150 bytes)
#: and, as RFC 9110 lets servers coalesce ranges closer than that, the gaps between them.
_PART_OVERHEAD = 512
_REPLY_MARGIN = 64 * 1024


#: Failures worth another attempt: a connection that failed or broke off, a silence longer than
#: ``conf.timeout``, HTTP 5xx.
RETRYABLE = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    aiohttp.ClientError,
    ServerError,
)


def _timed_out(exc: BaseException) -> bool:
    """Whether a requests error is, underneath urllib3's retry wrapping, a timeout."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError -> the last error
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError
        return False
    return isinstance(exc, requests.exceptions.Timeout) or isinstance(reason, urllib3.exceptions.TimeoutError)


@contextmanager
def transport_errors(what: str, service: str | None = None):
    """Turn the transport failures of requests and aiohttp into `ArchiveError` naming the service.

    ``service`` names who was asked (default: "MAST at <server>").
    """
    try:
        yield
    except (requests.exceptions.Timeout, aiohttp.ServerTimeoutError) as exc:
        raise ArchiveError(_too_slow(what, service)) from exc
    except (requests.exceptions.HTTPError, HTTPStatusError) as exc:
        raise ArchiveError(
            f"{what}: {_service(service)} answered {exc}. Try again later; if it keeps failing, check "
            f"the [mast] server setting in {astroquery_config_file()}."
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        if _timed_out(exc):
            raise ArchiveError(_too_slow(what, service)) from exc
        raise ArchiveError(_unreachable(what, service, exc)) from exc
    except aiohttp.ClientConnectorError as exc:
        raise ArchiveError(_unreachable(what, service, exc)) from exc
    except (RedirectError, TooSlowError, ReplyRefused) as exc:  # raised here without ``what``
        raise type(exc)(f"{what}: {exc}") from exc
    except requests.exceptions.TooManyRedirects as exc:
        last = exc.response.headers.get("Location") if exc.response is not None else None
        raise RedirectError(f"{what}: {_loop(last)}") from exc
    except requests.exceptions.InvalidSchema as exc:  # "No connection adapters were found for 'ftp:...'"
        where = re.search(r"'([^']*)'", str(exc))
        raise RedirectError(f"{what}: {_not_http(where.group(1) if where else exc)}") from exc
    except (
        requests.exceptions.RequestException,  # e.g. a body cut off mid-transfer
        aiohttp.ClientPayloadError,
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
    ) as exc:
        raise ArchiveError(
            f"{what}: the transfer from {_service(service)} failed ({exc}). Try again."
        ) from exc
    except aiohttp.ClientError as exc:
        raise ArchiveError(_unreachable(what, service, exc)) from exc


# The messages are made only when needed: entering `transport_errors` is on every request's path.
def _service(service: str | None) -> str:
    return service or f"MAST at {server_url()}"


def _loop(last) -> str:
    return f"redirected more than {MAX_REDIRECTS} times (a loop?), last to {last}."


def _not_http(where) -> str:
    return f"redirected to {where}, not an http(s) address: refused."


def _too_slow(what: str, service: str | None) -> str:
    return (
        f"{what}: {_service(service)} did not answer within {conf.timeout} s. "
        "Try again later, or raise glue_mvmcut.conf.timeout."
    )


def _unreachable(what: str, service: str | None, exc: BaseException) -> str:
    return (
        f"{what}: cannot reach {_service(service)} ({exc.__class__.__name__}). "
        f"Check the network and the [mast] server setting in {astroquery_config_file()}."
    )


class Retries:
    """The retry budget of one transfer: ``conf.retries`` more attempts after the first, each
    after twice as long a wait as the one before (``conf.backoff`` first).

    Transfers that retry by themselves count their failed attempts with `failed`; requests
    sessions get the same budget as urllib3's own retries (`for_urllib3`).
    """

    def __init__(self, what: str):
        self.what = what
        self.failures = 0

    def failed(self, exc: BaseException) -> float | None:
        """Count a failed attempt: seconds to wait before the next one, None once the budget is spent."""
        self.failures += 1
        if self.failures > int(conf.retries):
            return None
        wait = float(conf.backoff) * 2 ** (self.failures - 1)
        log.info("%s failed (%s); trying again in %.1f s.", self.what, exc, wait)
        return wait

    @staticmethod
    def for_urllib3() -> Retry:
        """The same budget for urllib3: HTTP 5xx and connections that fail before a reply."""
        return Retry(
            total=int(conf.retries),
            backoff_factor=float(conf.backoff) / 2,  # urllib3 waits 0, 2f, 4f, ...
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "HEAD", "POST"}),
            raise_on_status=False,
        )


# -- requests sessions -----------------------------------------------------------------------------
class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """Gives every request a timeout, `Retries.for_urllib3`, and for replies read whole, the
    pace of `Pace` (and the thread's `query_deadline`).

    astroquery 0.4.11 passes ``timeout=None`` to requests for portal queries and downloads, so a
    server that stops answering hangs the caller forever; its ``conf.timeout`` only bounds the
    total time spent polling ``EXECUTING`` replies. A socket timeout bounds each silence, not a
    trickle: a reply read whole is read here, at the pace `Pace` allows, and handed on as read.
    Callers that stream a body (downloads) read it with `read_body` themselves.
    """

    def __init__(self, timeout: float):
        super().__init__(max_retries=Retries.for_urllib3())
        self.timeout = timeout

    def send(self, request, stream=False, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        response = super().send(request, stream=True, **kwargs)
        if not stream:
            raw = response.raw
            try:  # paced from the headers on: a server may think a while (within the timeout)
                body = b"".join(read_body(response, Pace()))
            finally:
                raw.release_conn()
            response.raw = _Read(body, raw)
            response.headers.pop("Content-Encoding", None)  # decoded already
        return response


class _Read(io.BytesIO):
    """A urllib3 response whose body was read (requests reads it again from here, plainly);
    its other attributes (``version``, ``headers``, ...) are the response's."""

    def __init__(self, body: bytes, raw):
        super().__init__(body)
        self._raw = raw

    def stream(self, amount: int, decode_content: bool | None = None) -> Iterator[bytes]:
        while block := self.read(amount):
            yield block

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


def with_timeouts(session: requests.Session, timeout: float | None = None) -> requests.Session:
    """``session``, its every request now timing out after ``timeout`` s (default
    ``glue_mvmcut.conf.timeout``) of silence and retried as `Retries` says."""
    adapter = _TimeoutAdapter(float(conf.timeout if timeout is None else timeout))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def http_session(timeout: float | None = None) -> requests.Session:
    """A new requests session with `with_timeouts`, following at most `MAX_REDIRECTS` redirects,
    asking for bodies as they are (``Accept-Encoding: identity``)."""
    session = with_timeouts(requests.Session(), timeout)
    session.max_redirects = MAX_REDIRECTS
    session.headers["Accept-Encoding"] = "identity"
    return session


# -- the I/O loop of ranged reads ------------------------------------------------------------------
class _IO:
    """An event loop in a thread of its own and the aiohttp session that runs on it: every ranged
    read of the process goes through them, so connections stay alive across files and cutouts
    (against MAST's HTTPS each new one costs a TCP and a TLS handshake)."""

    def __init__(self):
        self.pid = os.getpid()
        self.urgent = 0  # `Urgent` work under way, and an event set while there is none
        self.calm = asyncio.Event()
        self.calm.set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="mvmcut-io", daemon=True).start()
        self.session = self.run(self._open())

    @staticmethod
    async def _open() -> aiohttp.ClientSession:
        # Not trust_env: it looks up .netrc and the proxy settings on a thread for every request,
        # so a request's bytes leave only after other work on the loop; the proxy is `proxy_of`'s.
        connector = aiohttp.TCPConnector(limit=64, limit_per_host=int(conf.connections))
        # Bodies as sent: an encoding that was not asked for is refused (`get_range`), not inflated.
        return aiohttp.ClientSession(connector=connector, auto_decompress=False)

    def run(self, coroutine: Coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        if self.pid == os.getpid():  # a forked child leaves its parent's alone
            self.run(self.session.close())
            self.loop.call_soon_threadsafe(self.loop.stop)


_io_lock = threading.Lock()
_io: _IO | None = None
# A forked child inherits the parent's loop without its thread and the parent's sockets: it
# makes its own, and keeps the parent's here unused (dropping them would warn of an unclosed
# session, closing them would run on a loop that no thread drives).
_inherited: list[_IO] = []


def _the_io() -> _IO:
    global _io
    with _io_lock:
        if _io is None:
            _io = _IO()
        return _io


def run(coroutine: Coroutine):
    """Run ``coroutine`` on the process's I/O loop and return its result (or raise its error).

    Called from any thread but the loop's own.
    """
    return _the_io().run(coroutine)


def submit(coroutine: Coroutine) -> concurrent.futures.Future:
    """Start ``coroutine`` on the process's I/O loop; its future (cancelling it cancels it)."""
    return asyncio.run_coroutine_threadsafe(coroutine, _the_io().loop)


@atexit.register
def _close_io() -> None:
    if _io is not None:
        _io.close()


def _renew_after_fork() -> None:
    """In a forked child: a new lock for the I/O loop (another thread of the parent may have held
    it at the fork), and an I/O loop of its own when it first reads."""
    global _io, _io_lock
    _io_lock = threading.Lock()
    if _io is not None:
        _inherited.append(_io)
        _io = None


os.register_at_fork(after_in_child=_renew_after_fork)


class Urgent:
    """Marks work on the I/O loop as urgent from its making until `done` (or the end of a
    ``with`` block): reading a layer's headers and sending the requests for its pixels.

    Each millisecond those requests wait costs the cutout a millisecond at its end, while work
    that only fills a wait (a cut's output headers, its WCS check: ~3-5 ms of Python per layer)
    can as well run later: `after_urgent_work` holds it back while urgent work is under way.
    Used on the I/O loop only.
    """

    def __init__(self):
        self._io = _the_io()
        self._io.urgent += 1
        self._io.calm.clear()
        self._active = True

    def done(self) -> None:
        """The urgent work is over (idempotent)."""
        if self._active:
            self._active = False
            self._io.urgent -= 1
            if not self._io.urgent:
                self._io.calm.set()

    def __enter__(self) -> "Urgent":
        return self

    def __exit__(self, *exc) -> None:
        self.done()


async def after_urgent_work(urgency: Urgent | None = None, until: asyncio.Future | None = None) -> None:
    """Wait until the I/O loop has done what is more urgent than the caller's next work.

    A millisecond lets replies that are due come in, the yield after it lets whatever they
    started, and the caller's own requests, leave. Then the caller's ``urgency`` is over, and
    with ``until`` the wait goes on while other work is urgent (`Urgent`: other layers'
    headers on their way, or their requests about to leave), or until ``until`` is done (the
    caller's replies are in: its work is due).
    """
    await asyncio.sleep(0.001)
    await asyncio.sleep(0)
    if urgency is not None:
        urgency.done()
    io = _the_io()
    if until is not None and io.urgent and not until.done():
        calm = asyncio.ensure_future(io.calm.wait())
        try:
            await asyncio.wait([calm, until], return_when=asyncio.FIRST_COMPLETED)
        finally:
            calm.cancel()


def proxy_of(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP(S)_PROXY``, ``NO_PROXY``), as requests uses it."""
    parts = urlsplit(url)
    return _proxy_for(parts.scheme, parts.hostname)


@functools.lru_cache(maxsize=64)
def _proxy_for(scheme: str, host: str | None) -> str | None:
    # Kept per host: urllib reads the whole environment for each look-up (~0.7 ms, before the
    # first request of every layer).
    if host is None or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


async def _capped_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of a 206 ``response``, refused if encoded or longer than ``limit`` bytes
    (before it is read, where its length is announced)."""
    check_encoding(response.headers, "identity")
    length = response.content_length
    if length is None:  # chunked, or ended by the connection: read up to the limit
        body = bytearray()
        async for block in response.content.iter_any():
            body += block
            if len(body) > limit:
                break
        else:
            return bytes(body)
    elif length <= limit:
        return await response.read()  # aiohttp reads the announced length, no more
    raise ReplyRefused(f"{response.url} sent more than the {limit} bytes the ranges asked may take: refused")


async def _body_prefix(response: aiohttp.ClientResponse, length: int) -> bytes:
    """The first ``length`` bytes of a 200 ``response``'s body (fewer if it is shorter); none if
    it is encoded."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return b""
    body = bytearray()
    while len(body) < length and (block := await response.content.read(length - len(body))):
        body += block
    return bytes(body)


@dataclass(frozen=True)
class Reply:
    """What `get_range` got: status, reason, headers, body (of a 206, or the first bytes of a
    200 where asked) and the URL that answered (another than the one asked if the request was
    redirected)."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    url: str


async def get_range(url: str, byte_range: str, asked: int, prefix: int = 0) -> Reply:
    """A GET of ``byte_range`` (a Range header value, for ``asked`` bytes in all) of ``url`` on
    the I/O loop's session, following redirects (`MAX_REDIRECTS`, http(s) only, the Range
    header kept); the body of a 206 reply, and of a 200 (the whole file) its first ``prefix``
    bytes only, if it is not encoded (the connection then closes, the rest unread).

    The body may take as long as `Pace` allows for what was asked (counted from the reply's
    headers: a request waiting for one of the connections, or for the server, waits within
    ``conf.timeout`` of silence), and hold the bytes asked and the multipart framing around
    them, nothing more, and no encoding.

    Raises aiohttp's errors (a silence longer than ``conf.timeout`` as
    `aiohttp.ServerTimeoutError`), for `transport_errors` to translate, `TooSlowError`,
    `ReplyRefused` and `RedirectError`.
    """
    seconds = float(conf.timeout)
    allowed = Pace.allowance(asked)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
    headers = {"Range": byte_range, "Accept-Encoding": "identity"}
    limit = asked + _PART_OVERHEAD * (byte_range.count(",") + 1) + _REPLY_MARGIN
    try:
        async with _the_io().session.get(
            url, headers=headers, timeout=timeout, proxy=proxy_of(url), max_redirects=MAX_REDIRECTS + 1
        ) as response:
            body = b""
            if response.status == 206:
                body = await asyncio.wait_for(_capped_body(response, limit), allowed)
            elif response.status == 200 and prefix:
                body = await asyncio.wait_for(_body_prefix(response, prefix), Pace.allowance(prefix))
            return Reply(response.status, response.reason or "", response.headers, body, str(response.url))
    except aiohttp.ServerTimeoutError:  # a silence, or no connection, for ``conf.timeout``
        raise
    except TimeoutError as exc:  # ``allowed`` ran out: asyncio's own
        raise TooSlowError(
            f"{url} sent fewer than the {asked} bytes asked in {allowed:.0f} s, slower than "
            f"glue_mvmcut.conf.min_rate = {conf.min_rate} kB/s: stopped. Try again later, or "
            "lower min_rate for a slow link."
        ) from exc
    except aiohttp.TooManyRedirects as exc:
        raise RedirectError(_loop(exc.history[-1].headers.get("Location"))) from exc
    except (aiohttp.NonHttpUrlRedirectClientError, aiohttp.InvalidUrlRedirectClientError) as exc:
        raise RedirectError(_not_http(exc.args[0] if exc.args else exc)) from exc
