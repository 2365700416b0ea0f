"""FITS headers as the package reads and writes them: cards, where each HDU lies, WCSs.

- `HDUInfo`: one HDU of a file read over HTTP — its header as read (parsed by astropy only
  when asked) and where its data lie; `HeaderCache` keeps a process's layer headers.
- `celestial_wcs`, `plain_wcs`, `read_wcs`: WCSs from header text, by wcslib alone where
  nothing in the header needs more (~0.25 ms instead of astropy's ~3 ms).
- `edited_header`, `card_image`, `hdu_with_header`: output headers made by editing cards as
  text, and HDUs made without astropy copying them card by card.

Headers of MVM layers are long (~870 primary, ~106 SCI and ~56 WHT cards) and a cutout reads and
writes several, so the costs of astropy's general path show; each shortcut here says what it
saves and keeps astropy's result.
"""

import functools
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.io.fits.hdu.base import BITPIX2DTYPE
from astropy.wcs import WCS, FITSFixedWarning, Wcsprm

from .errors import NotMVMFileError
from .threadsafe import catch_warnings

__all__ = [
    "BLOCK",
    "CARD",
    "END_CARD",
    "MAX_HEADER",
    "HDUInfo",
    "HeaderCache",
    "LAYER_HEADERS",
    "card_value",
    "find_card",
    "hdu_data_size",
    "layout_problem",
    "header_text",
    "edited_header",
    "card_image",
    "verified_cards",
    "hdu_with_header",
    "stored_dtype",
    "read_wcs",
    "plain_wcs",
    "celestial_wcs",
    "forget_headers",
]

#: Bytes of a FITS block and of a header card; the END card's image.
BLOCK = 2880
CARD = 80
END_CARD = b"END" + b" " * 77
END = END_CARD.decode("ascii")
#: The longest header read: an MVM layer's primary header is ~75 KB; 10 MB without an END card
#: is no FITS header worth reading.
MAX_HEADER = 10 << 20
_BITPIX = (8, 16, 32, 64, -32, -64)


@dataclass
class HDUInfo:
    """Where one HDU lives in the file, and its header.

    The header is kept as read (``cards``, up to its END card) and parsed by astropy when first
    asked for (`header`): that takes ~2 ms for an MVM primary header of ~870 cards, and a cold
    cutout asks for its rows before. Single keywords come without it: ``info["NAXIS1"]``,
    ``info.get("EXTNAME")``.

    A ``guessed`` HDU has not been read yet: it is assumed to be laid out like the HDU before it
    (same BITPIX and shape; its ``cards`` are that HDU's, its ``name`` its own) with a header as
    long as `~glue_mvmcut.core.remote.RemoteFITS.read_headers` expects;
    `~glue_mvmcut.core.remote.RemoteFITS.read_windows` reads its header along with its pixels
    and corrects both if the guess was wrong.
    """

    cards: bytes
    header_offset: int
    data_offset: int
    data_size: int  # bytes of data, without the padding to 2880
    name: str  # PRIMARY, or the extension's EXTNAME
    guessed: bool = False
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, cards: bytes, header_offset: int, length: int, source: str = "the file") -> "HDUInfo":
        """The HDU whose header ``cards``, ``length`` bytes with their padding, begin at
        ``header_offset`` of ``source`` (a name for messages).

        Raises
        ------
        NotMVMFileError
            If the header's data layout is impossible (`layout_problem`).
        """
        info = cls(cards, header_offset, header_offset + length, 0, "PRIMARY")
        problem = layout_problem(info)
        if problem:
            raise NotMVMFileError(f"{source}: the header at byte {header_offset} has {problem}.")
        info.data_size = hdu_data_size(info)
        if header_offset:
            info.name = str(info.get("EXTNAME", "")).strip().upper()
        return info

    @functools.cached_property
    def header(self) -> fits.Header:
        """The header, parsed when first asked for."""
        return fits.Header.fromstring(self.cards.decode("ascii"))

    def __getitem__(self, keyword: str):
        """The value of ``keyword`` (the first card of that name), found without parsing the
        rest of the header; KeyError if there is none."""
        if "header" in self.__dict__:
            return self.header[keyword]
        if keyword not in self._values:
            at = find_card(self.cards, f"{keyword:8}= ".encode())
            if at < 0:
                raise KeyError(keyword)
            self._values[keyword] = card_value(self.cards[at : at + CARD])
        return self._values[keyword]

    def get(self, keyword: str, default=None):
        """The value of ``keyword``, ``default`` if there is none."""
        try:
            return self[keyword]
        except KeyError:
            return default

    def become(self, real: "HDUInfo") -> None:
        """Take the place and header of ``real``, the HDU read where this one was guessed."""
        self.cards, self.header_offset, self.data_offset = real.cards, real.header_offset, real.data_offset
        self.data_size, self.name, self.guessed = real.data_size, real.name, False
        self._values = real._values
        self.__dict__.pop("header", None)

    @property
    def end(self) -> int:
        """Offset of the next HDU."""
        return self.data_offset + -(-self.data_size // BLOCK) * BLOCK


@functools.lru_cache(maxsize=4096)
def card_value(image: bytes):
    """The value of the card ``image`` (80 bytes), as astropy reads it.

    Cards recur: a layer's WHT header repeats most of its SCI header (BITPIX, NAXIS1, ...), and
    layers repeat each other's; astropy takes ~20 µs to read one.
    """
    return fits.Card.fromstring(image.decode("ascii")).value


def find_card(data: bytes, start: bytes) -> int:
    """Offset of the first card image in ``data`` that begins with ``start``, -1 if none."""
    at = data.find(start)
    while at > 0 and at % CARD:  # a card's image starts every 80 bytes
        at = data.find(start, at + 1)
    return at


def layout_problem(header) -> str | None:
    """What makes a header's data layout impossible, or None: a BITPIX, NAXIS or NAXISn that is
    not one, a negative PCOUNT or GCOUNT. Checked before astropy sees a header: a negative
    NAXISn makes its next HDU begin before this one, and astropy walks that loop for ever."""

    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    try:
        values = {key: header.get(key) for key in ("BITPIX", "NAXIS", "PCOUNT", "GCOUNT")}
        if values["BITPIX"] not in _BITPIX:
            return f"BITPIX = {values['BITPIX']!r}, not one of {_BITPIX}"
        if not whole(values["NAXIS"]) or values["NAXIS"] > 999:
            return f"NAXIS = {values['NAXIS']!r}, not a number of axes"
        for axis in range(1, values["NAXIS"] + 1):
            length = header.get(f"NAXIS{axis}")
            if not whole(length):
                return f"NAXIS{axis} = {length!r}, not a length"
    except ValueError as exc:  # a card astropy cannot read
        return f"an unreadable card ({exc})"
    if values["PCOUNT"] is not None and not whole(values["PCOUNT"]):
        return f"PCOUNT = {values['PCOUNT']!r}, not a count"
    if values["GCOUNT"] is not None and not (whole(values["GCOUNT"]) and values["GCOUNT"] > 0):
        return f"GCOUNT = {values['GCOUNT']!r}, not a count"
    return None


def hdu_data_size(header) -> int:
    """Bytes of data after a header (a `~astropy.io.fits.Header` or an `HDUInfo`)."""
    naxis = header.get("NAXIS", 0)
    if naxis == 0:
        return 0
    elements = 1
    for axis in range(1, naxis + 1):
        elements *= header[f"NAXIS{axis}"]
    return abs(header["BITPIX"]) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + elements)


class HeaderCache:
    """Layer headers (`~glue_mvmcut.core.remote.RemoteFITS.read_headers`) by URL, with the file
    version they were read from, so that a second cutout of a layer needs one round trip instead
    of two.

    Whoever uses an entry checks the version the server reports while reading pixels (every
    ranged reply carries the file size, and Last-Modified where the server sends it) against the
    entry's, and drops the entry if they differ. Thread-safe; keeps the ``capacity`` most
    recently used entries (each ~80 KB for an MVM layer).
    """

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[dict[str, HDUInfo], tuple]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str) -> tuple[dict[str, HDUInfo], tuple] | None:
        """(hdus, version) for ``url``, or None."""
        with self._lock:
            entry = self._entries.get(url)
            if entry is not None:
                self._entries.move_to_end(url)
            return entry

    def put(self, url: str, hdus: dict[str, HDUInfo], version: tuple) -> None:
        """Remember fully read ``hdus`` of ``url`` at file ``version``."""
        with self._lock:
            self._entries[url] = (hdus, version)
            self._entries.move_to_end(url)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def drop(self, url: str) -> None:
        """Forget ``url``."""
        with self._lock:
            self._entries.pop(url, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()


#: The headers of the layers this process has cut from, used by `~glue_mvmcut.core.cutout.cut_layer`.
LAYER_HEADERS = HeaderCache()


@functools.lru_cache(maxsize=64)
def celestial_wcs(text: str) -> WCS | None:
    """The celestial WCS of a header, None if it has none; kept for the next cutout of the layer.

    Reading an MVM SCI header's WCS takes ~0.3 ms (~3 ms where `plain_wcs` cannot), a copy of
    it 0.03 ms: a batch cuts each layer for many targets, and a layer's header text is the same
    however often it is read. Callers get copies (astropy before 8.0 let threads race on one
    WCS), and this one is set up (``wcs.set``) here, so copying it reads it only.
    """
    wcs = plain_wcs(text)
    if wcs is None:
        wcs = read_wcs(text)
    if not wcs.has_celestial:
        return None
    wcs = wcs.celestial
    wcs.wcs.set()
    return wcs


def read_wcs(header: fits.Header | str) -> WCS:
    with catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # e.g. "RADECSYS -> RADESYS" notes
        return WCS(header)


# Cards that may hold a distortion astropy reads beyond wcslib: SIP (A_/B_/AP_/BP_), lookup
# tables (CPDIS/CQDIS/CPERR/CQERR, DP/DQ records, D2IM), AXISCORR, pre-2012 SCAMP PV terms, and
# CTYPEs naming a distortion.
_DISTORTION_KEYWORDS = (
    "A_", "B_", "AP_", "BP_", "CPDIS", "CQDIS", "CPERR", "CQERR", "DP1", "DP2", "DQ1", "DQ2", "D2IM",
    "AXISCORR", "PV1_", "PV2_",
)  # fmt: skip
_DISTORTED_CTYPE = re.compile(r"CTYPE[^=]{0,3}=\s*'[^']*(?:SIP|TPV|TNX|ZPX)")


def plain_wcs(text: str) -> WCS | None:
    """The WCS of a header read by wcslib alone, None if it may hold a distortion beyond wcslib's.

    ``WCS(header)`` spends ~2.5 ms of Python on an MVM SCI header of ~106 cards (it writes the
    header out and parses it again, twice, looking for SIP and lookup-table distortions); wcslib
    reads it in ~0.25 ms. Where there are none of those, that is all there is to read.
    """
    cards = range(0, len(text), CARD)
    if any(text.startswith(_DISTORTION_KEYWORDS, at) for at in cards):
        return None
    if _DISTORTED_CTYPE.search(text):
        return None
    with catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(naxis=2)
        wcs.wcs = Wcsprm(header=text.encode("ascii"), relax=True)
        wcs.fix()  # as WCS(header) does
    return wcs


def header_text(header: fits.Header | HDUInfo) -> str:
    """A header's cards as text: a remote layer's as read, a parsed header's written out."""
    return header.cards.decode("ascii") if isinstance(header, HDUInfo) else header.tostring()


def edited_header(
    header: fits.Header | HDUInfo, settings: list[tuple], drop: tuple[str, ...] = ()
) -> fits.Header:
    """A header of one's own: ``header``'s cards with each ``(keyword, value[, comment])`` of
    ``settings`` set as ``header[keyword] = value`` (or ``(value, comment)``) sets it, and the
    keywords ``drop`` removed, parsed once.

    Setting keywords on a parsed ~150-card header costs ~40 µs of astropy's Python each (and
    copying it ~0.4 ms); here the cards are edited as text: a keyword there is set in place
    (its comment kept unless one is given), a new one goes after the last card that is not
    commentary or blank, taking the place of a trailing blank card if there is one.
    """
    cards = list(verified_cards(header_text(header)))
    if drop:
        dropped = tuple(f"{keyword:8}=" for keyword in drop)
        cards = [card for card in cards if not card.startswith(dropped)]
    for keyword, value, *given in settings:
        comment = given[0] if given else None
        key = f"{keyword:8}="
        at = next((k for k, card in enumerate(cards) if card.startswith(key)), None)
        if at is not None:
            cards[at] = card_image(keyword, value, comment, cards[at])
            continue
        at = len(cards)
        while at and not cards[at - 1].strip():  # trailing blank cards
            at -= 1
        while at and cards[at - 1][:8].rstrip() in ("", "COMMENT", "HISTORY"):
            at -= 1
        cards.insert(at, card_image(keyword, value, comment))
        if not cards[-1].strip():
            del cards[-1]
    edited = fits.Header.fromstring("".join(cards) + END)
    # astropy verifies a card parsed from text each time it renders one ("fix+warn", in
    # `Card.image`) whether it was verified before or not: ~15 µs a card, 13 ms for a layer
    # primary of ~870 cards on every cutout written (and every `header_text` of it). These are
    # verified cards (`verified_cards`, and `card_image`'s astropy made), so they say so, as
    # baseband marks the cards it has checked.
    for card in edited.cards:
        card._verified = True
    return edited


@functools.lru_cache(maxsize=64)
def verified_cards(text: str) -> tuple[str, ...]:
    """The card images of header ``text`` (up to END) as astropy writes them: each card
    verified as writing verifies it ("fix+warn", fixable cards fixed with a warning), once per
    text (a batch's cutouts of a layer all start from its headers)."""
    written = fits.Header.fromstring(text).tostring()
    cards = [written[at : at + CARD] for at in range(0, len(written), CARD)]
    return tuple(cards[: cards.index(END)])


@functools.lru_cache(maxsize=1024, typed=True)
def card_image(keyword: str, value, comment: str | None, old: str | None = None) -> str:
    """The image of the card ``keyword = value / comment``, as astropy makes it; with no
    ``comment``, that of the card ``old`` it replaces, if any.

    A cutout's SCI and WHT get the same new cards, and a batch's cutouts of a layer many alike;
    astropy takes ~20 µs to make one.
    """
    if comment is None and old is not None:
        comment = fits.Card.fromstring(old).comment
    return fits.Card(keyword, value, comment).image


def stored_dtype(bitpix: int) -> np.dtype:
    """The numpy type of pixels stored with ``BITPIX`` = ``bitpix``: big-endian, as in FITS."""
    return np.dtype(BITPIX2DTYPE[bitpix]).newbyteorder(">")


def hdu_with_header(kind, header: fits.Header, data: np.ndarray | None = None):
    """A ``kind`` HDU of ``data`` with ``header`` (a layer's, already in FITS order) as it is.

    Given a header, astropy's HDU constructors copy it and rebuild it card by card (~6 ms for
    an MVM layer's primary of ~870 cards, more than the rest of building a cutout); the headers
    here are already copies of the layer's, so they are set as they are (the setter makes BITPIX
    and NAXIS follow ``data``).
    """
    hdu = kind(data=data)
    hdu.header = header
    return hdu


def forget_headers() -> None:
    """Forget what this process learned about layers' headers: `LAYER_HEADERS`, their SCI WCSs,
    the values of their cards and the cards made for cutouts (e.g. to time a cold cutout)."""
    LAYER_HEADERS.clear()
    celestial_wcs.cache_clear()
    card_value.cache_clear()
    card_image.cache_clear()
    verified_cards.cache_clear()


def _renew_after_fork() -> None:
    """In a forked child: a new lock for the header cache (another thread of the parent may have
    held it at the fork)."""
    LAYER_HEADERS._lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_after_fork)
