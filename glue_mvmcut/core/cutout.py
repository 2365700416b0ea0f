"""SCI + WHT cutouts of one MVM layer: exact pixel slices, never resampled.

The layer may be a local file (memory-mapped, so only the box's rows are read) or the archive's
file over HTTP (only the headers and the box's row spans are fetched, see
`~glue_mvmcut.core.remote`). Both paths share one window computation — astropy's own
``skycoord_to_pixel`` and ``overlap_slices``, exactly as `~astropy.nddata.Cutout2D` does — and one
output builder, so they give identical cutouts. A box partly off the layer keeps its full size,
padded with 0 (no data, as MVM layers mark it). The output keeps the layer's primary header (plus
RA_OBJ, DEC_OBJ, ORIG_FLE, FILENAME) and its extension headers with CRPIX shifted, so the cutout's
WCS is the layer's own.
"""

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import NoOverlapError
from astropy.nddata.utils import overlap_slices
from astropy.wcs.utils import skycoord_to_pixel

from .coords import parse_coord, parse_size
from .endpoints import file_url
from .errors import InvalidNameError
from .files import atomic_target
from .fitsfile import (
    LaidOutFITS,
    block_bytes,
    file_of,
    is_scaled,
    open_mapped,
    placeholder,
    read_rows,
    row_blocks,
    stored_rows,
    write_fits,
)
from .fitsheaders import LAYER_HEADERS, HDUInfo, edited_header, hdu_with_header
from .layers import (
    EXTENSIONS,
    Window,
    box_shape,
    check_shapes,
    cut_header,
    layer_name,
    open_layer,
    physical_pixels,
    plan_window,
    refuse_compressed,
    wcs_scales,
)
from .names import CutoutName, LayerName, safe_filename
from .remote import RemoteFITS
from .skycells import SCALES
from .transport import TransferStats, Urgent, after_urgent_work, run

__all__ = ["cut_layer", "cut_local", "cut_remote", "layer_hdus", "has_data"]

log = logging.getLogger(__name__)


def _is_remote(source) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://", "mast:"))


def cut_layer(
    source,
    coord,
    size,
    *,
    stats: TransferStats | None = None,
    cancel=None,
    hdus: dict[str, HDUInfo] | None = None,
    out_dir=None,
) -> fits.HDUList:
    """Cut SCI and WHT out of one MVM layer, from a local file or straight from the archive.

    Parameters
    ----------
    source : path-like or str
        A local MVM layer file, or the layer in the archive: its ``dataURI``
        (``mast:HST/product/<file>``) or an http(s) URL. Remote layers are read with ``Range``
        requests: only the headers and the rows of the box are transferred.
    coord : `~astropy.coordinates.SkyCoord` or anything `~glue_mvmcut.core.coords.parse_coord` reads
        Centre of the box.
    size : float, (ny, nx) pair, or `~astropy.units.Quantity`
        Plain numbers are arcsec; Quantities may be angular or in pixels (``u.pix``). Never
        transposed: the output shape is ``(ny, nx)``.
    stats, cancel
        For remote layers: a `~glue_mvmcut.core.transport.TransferStats` to count bytes and
        requests, and a cancel callable checked between requests.
    hdus : dict, optional
        For remote layers: what `layer_hdus` returned for this layer, so its headers are not
        read again (e.g. shared by many cutouts of one layer). Without it, headers this process
        read before (`~glue_mvmcut.core.fitsheaders.LAYER_HEADERS`) are used when the file has not
        changed since.
    out_dir : path-like, optional
        Write the cutout into this folder under its FILENAME (atomically). One larger than
        ``conf.block_mb`` per array is written a block of rows at a
        time as they are read, never whole in memory, and returned opened from its file.

    Returns
    -------
    `~astropy.io.fits.HDUList`
        PRIMARY (the layer's primary header + RA_OBJ, DEC_OBJ, ORIG_FLE, FILENAME), SCI and WHT
        (float32, big-endian as FITS stores them and astropy reads them; the layer's pixels, 0
        where the box leaves the layer).

    Raises
    ------
    OutsideFootprintError
        If the box lies wholly outside the layer.
    NotMVMFileError
        If ``source`` is not a readable, complete MVM layer.
    ArchiveError
        If a remote layer cannot be read (`~glue_mvmcut.core.remote.RangeNotSupported` when the
        server ignores ``Range``).
    """
    coord = parse_coord(coord)
    size = parse_size(size, allow_pixels=True)
    if _is_remote(source):
        cutout = run(cut_remote(source, coord, size, stats=stats, cancel=cancel, hdus=hdus, spill=out_dir))
    else:
        cutout = cut_local(source, coord, size, spill=out_dir)
    if out_dir is not None and file_of(cutout) is None:  # held in memory: written now
        write_fits(cutout, out_dir)
    return cutout


def cut_local(path, coord, size, *, spill=None) -> fits.HDUList:
    """`cut_layer` of a local layer file (``coord`` and ``size`` as `cut_remote` takes them); a
    cutout larger than ``conf.block_mb`` per array is written into the folder ``spill`` (if
    given) a block of rows at a time and returned opened from its file."""
    hdul, layer = open_layer(path)
    with hdul:
        headers = {ext: hdul[ext].header for ext in EXTENSIONS}
        window = plan_window(layer, headers, coord, size)
        if spill is not None and _streamed(window.shape):
            cutout = _Cutout(hdul[0].header, layer, coord, window, streamed=True)
            with cutout.writing(spill, headers) as file:
                for ext in EXTENSIONS:
                    for rows in row_blocks(window.large[0].start, window.large[0].stop, window.shape[1]):
                        cutout.put(file, ext, rows, read_rows(hdul[ext], rows, window.large[1]))
            return cutout.opened(spill)
        cutout = _Cutout(hdul[0].header, layer, coord, window)
        # A section reads only the rows of the box (only the tiles it touches of a tile-compressed
        # extension), in physical values; the memory-mapped data is quicker where it needs no scaling.
        pieces = [
            hdul[ext].section[window.large]
            if isinstance(hdul[ext], fits.CompImageHDU) or is_scaled(headers[ext])
            else hdul[ext].data[window.large]
            for ext in EXTENSIONS
        ]
        return cutout.finish(headers, pieces)


def _streamed(shape: tuple[int, int] | None) -> bool:
    """Whether a cutout of ``shape`` (None: not known) is written block by block rather than
    held in memory."""
    return shape is None or shape[0] * shape[1] * 4 > block_bytes()


def _expected_shape(filename: str, size: u.Quantity) -> tuple[int, int] | None:
    """The (ny, nx) of a box of ``size`` on the MVM layer ``filename`` by its name's pixel
    scale; None if that is no MVM layer name."""
    try:
        scale = SCALES[LayerName.parse(filename).scale] * u.arcsec
    except InvalidNameError:
        return None
    return box_shape(size, [scale, scale])


def _remote(source: str, stats, cancel) -> RemoteFITS:
    url = file_url(source) if source.startswith("mast:") else source
    return RemoteFITS(url, stats=stats, cancel=cancel)


def layer_hdus(
    source: str,
    *,
    stats: TransferStats | None = None,
    cancel=None,
) -> dict[str, HDUInfo]:
    """Read the PRIMARY, SCI and WHT headers of a layer in the archive (and where their data lie).

    The result is small (a few tens of KB) and can be handed to `cut_layer` (``hdus=``) for any
    number of cutouts of the same layer, anywhere.

    Parameters
    ----------
    source : str
        The layer's ``dataURI`` (``mast:HST/product/<file>``) or an http(s) URL.
    stats, cancel
        As for `cut_layer`.
    """
    return run(_remote(source, stats, cancel).read_headers(EXTENSIONS))


class _StaleHeaders(Exception):
    """The layer changed on the server since its cached headers were read."""


async def cut_remote(
    source: str, coord, size, *, stats=None, cancel=None, hdus=None, spill=None
) -> fits.HDUList:
    """`cut_layer` of a layer in the archive, as a coroutine for the I/O loop
    (`~glue_mvmcut.core.transport.run` or `~glue_mvmcut.core.transport.submit`); ``coord`` an ICRS
    `~astropy.coordinates.SkyCoord` and ``size`` a ``(ny, nx)`` Quantity, as
    `~glue_mvmcut.core.coords.parse_coord` and `~glue_mvmcut.core.coords.parse_size` give them.

    A cutout larger than ``conf.block_mb`` per array (or of a layer whose name does not tell its
    pixel scale) is written into the folder ``spill`` (if given) a block of rows at a time, as
    they come, and returned opened from its file."""
    try:
        return await _cut_remote_once(_remote(source, stats, cancel), coord, size, hdus, spill)
    except _StaleHeaders as exc:
        log.info("%s changed on the server since its headers were read; reading them again.", exc)
        return await _cut_remote_once(_remote(source, stats, cancel), coord, size, hdus, spill)


async def _cut_remote_once(remote: RemoteFITS, coord, size, hdus=None, spill=None) -> fits.HDUList:
    if spill is not None and _streamed(_expected_shape(remote.name, size)):
        return await _cut_remote_streamed(remote, coord, size, hdus, spill)
    # Urgent until the pixel requests leave: other layers' work that fills a wait yields to it.
    with Urgent() as urgency:
        return await _cut_remote_urgently(remote, coord, size, hdus, urgency)


async def _cut_remote_streamed(remote: RemoteFITS, coord, size, hdus, out_dir) -> fits.HDUList:
    """`_cut_remote_once` of a cutout written into ``out_dir`` a block of rows at a time: its
    file is laid out from the headers (all read first: the layout needs WHT's), then each block
    of rows is read from the archive straight into the file."""
    cached = LAYER_HEADERS.get(remote.url) if hdus is None else None
    version = None
    if cached is not None:
        hdus, version = cached
    elif hdus is None:
        hdus = await remote.read_headers(EXTENSIONS)
    refuse_compressed(remote.name, "SCI", hdus["SCI"])
    layer = layer_name(hdus["PRIMARY"], remote.name)
    window = plan_window(layer, {ext: hdus[ext] for ext in EXTENSIONS}, coord, size)
    cutout = _Cutout(hdus["PRIMARY"], layer, coord, window, streamed=True)
    columns = window.small[1]  # of the cutout, where the layer's pixels go
    with cutout.writing(out_dir, hdus) as file:
        for rows in row_blocks(window.large[0].start, window.large[0].stop, window.shape[1]):
            written = cutout.rows_of(rows)
            with (
                file.rows(1, written, columns, overwritten=True) as sci,
                file.rows(2, written, columns, overwritten=True) as wht,
            ):
                into = [(block, (slice(None), columns)) for block in (sci, wht)]
                pieces = await remote.read_windows(
                    [(hdus[ext], rows, window.large[1]) for ext in EXTENSIONS], into=into
                )
                for ext, (block, at), piece in zip(EXTENSIONS, into, pieces, strict=True):
                    physical = physical_pixels(piece, hdus[ext])
                    if not np.may_share_memory(physical, block):  # a scaled layer's
                        block[at] = physical
        _check_version(remote, cached, version, hdus)
    return cutout.opened(out_dir)


async def _cut_remote_urgently(remote: RemoteFITS, coord, size, hdus, urgency: Urgent) -> fits.HDUList:
    cached = LAYER_HEADERS.get(remote.url) if hdus is None else None
    version, guess = None, None
    if cached is not None:
        hdus, version = cached
    elif hdus is None:
        # WHT's header is fetched with the pixels (one round trip less), so it is known for
        # sure only after the read.
        async def guessed():
            await after_urgent_work()  # the request leaves, then its wait is put to use
            return _Guess.of(remote.name, coord, size)

        hdus, guess = await asyncio.gather(remote.read_headers(EXTENSIONS, guess_last=True), guessed())
    # Up to the requests, keywords are read from the headers' cards one by one: astropy parses
    # whole headers meanwhile, for the output.
    refuse_compressed(remote.name, "SCI", hdus["SCI"])  # before any of its rows are asked for
    layer = layer_name(hdus["PRIMARY"], remote.name)
    known = {ext: hdus[ext] for ext in EXTENSIONS}
    window = guess.window(hdus["SCI"]) if guess is not None else None
    if window is None:
        window = plan_window(layer, known, coord, size)
    cutout = None
    pixels = {ext: _new_pixels(window.shape) for ext in EXTENSIONS}  # the rows are read into them

    async def meanwhile():  # while the pixels are on their way: what is known already
        nonlocal cutout
        checked = plan_window(layer, known, coord, size) if guess is not None else window
        await asyncio.sleep(0)  # each step of ~1-3 ms lets replies that came in go first
        cutout = _Cutout(hdus["PRIMARY"], layer, coord, checked, pixels if checked == window else None)
        for ext in EXTENSIONS:
            if not known[ext].guessed:
                await asyncio.sleep(0)
                cutout.add(ext, known[ext])

    def header_came(info: HDUInfo):  # WHT's header, with the first of the pixels
        for ext in EXTENSIONS:
            if known[ext] is info and cutout is not None:
                cutout.add(ext, info)

    windows = [(hdus[ext], *window.large) for ext in EXTENSIONS]
    pieces = await remote.read_windows(
        windows,
        meanwhile=meanwhile,
        on_header=header_came,
        urgency=urgency,
        into=[(pixels[ext], window.small) for ext in EXTENSIONS],
    )
    if cutout.window != window:  # the tessellation's guess was wrong: the right rows, now
        log.info("%s: the box is not where its skycell's grid puts it; reading its rows again.", remote.name)
        pieces = await remote.read_windows(
            [(hdus[ext], *cutout.window.large) for ext in EXTENSIONS],
            into=[(cutout.hdus[ext].data, cutout.window.small) for ext in EXTENSIONS],
        )
    _check_version(remote, cached, version, hdus)
    check_shapes(layer.filename, known)  # SCI's header is as it was; WHT's may be new
    return cutout.finish(
        known, [physical_pixels(piece, known[ext]) for ext, piece in zip(EXTENSIONS, pieces, strict=True)]
    )


def _check_version(remote: RemoteFITS, cached, version, hdus) -> None:
    """Keep the headers read of a layer for later cuts (`LAYER_HEADERS`); raise `_StaleHeaders`
    if headers taken from there (``cached``, of file ``version``) are of another version of the
    file than the pixels just read."""
    if cached is not None and _differ(remote.version, version):
        LAYER_HEADERS.drop(remote.url)
        raise _StaleHeaders(remote.url)
    if cached is None:
        LAYER_HEADERS.put(remote.url, hdus, remote.version)


def has_data(cutout: fits.HDUList) -> bool:
    """Whether any pixel of a cutout's WHT is > 0, read a block of rows at a time (where its
    file holds more than holes)."""
    wht = cutout["WHT"]
    stored = stored_rows(wht)
    return any(
        np.any(read_rows(wht, rows) > 0) for rows in row_blocks(stored.start, stored.stop, wht.shape[1])
    )


def _differ(now: tuple, then: tuple) -> bool:
    """Whether two (size, Last-Modified) file versions disagree where both are known."""
    return any(a is not None and b is not None and a != b for a, b in zip(now, then, strict=True))


@dataclass
class _Guess:
    """Where the box falls on a layer's full skycell, from the tessellation alone: worked out
    while the layer's headers are on their way, so that its rows can be asked for as soon as
    they arrive. (`plan_window`, from the headers, checks it while the rows are on their way.)

    A layer is its skycell's grid trimmed to a subarray (MVM), so the box's place in the layer
    is its place on the skycell shifted by the difference of their CRPIX.
    """

    x: float
    y: float
    shape: tuple[int, int]
    crpix: tuple[float, float]

    @classmethod
    def of(cls, filename: str, coord, size) -> "_Guess | None":
        """The guess for the layer ``filename``, None if that is no MVM layer name."""
        try:
            layer = LayerName.parse(filename)
        except InvalidNameError:
            return None
        wcs = layer.skycell.wcs(layer.scale)
        x, y = skycoord_to_pixel(coord, wcs, mode="all")
        return cls(float(x), float(y), box_shape(size, wcs_scales(wcs)), tuple(wcs.wcs.crpix.tolist()))

    def window(self, sci: fits.Header | HDUInfo) -> Window | None:
        """The box's window in the layer whose SCI header is ``sci``; None if it cannot say."""
        try:
            x = self.x - (self.crpix[0] - float(sci["CRPIX1"]))
            y = self.y - (self.crpix[1] - float(sci["CRPIX2"]))
            large, small = overlap_slices((sci["NAXIS2"], sci["NAXIS1"]), self.shape, (y, x), mode="partial")
        except (KeyError, TypeError, ValueError, NoOverlapError):
            return None
        return Window(self.shape, large, small)


def _new_pixels(shape: tuple[int, int]) -> np.ndarray:
    """A cutout extension's pixels before any are read: float32 zeros (0 = no data, MVM's fill),
    big-endian as FITS stores them, so that remote reads write into them as they come."""
    return np.zeros(shape, ">f4")


class _Cutout:
    """The cutout of one layer as it is built: PRIMARY at once, each extension from its layer
    header (a remote layer's known headers while its pixels are on their way), pixels last.

    Shared by local and remote layers, so both give identical files.
    """

    def __init__(
        self,
        primary_header: fits.Header | HDUInfo,
        layer: LayerName,
        coord,
        window: Window,
        pixels: dict[str, np.ndarray] | None = None,
        streamed: bool = False,
    ):
        self.layer, self.window = layer, window
        self.name = CutoutName.for_layer(layer, coord.ra.deg, coord.dec.deg).filename
        primary = edited_header(
            primary_header,
            [
                ("RA_OBJ", coord.ra.deg, "[deg] right ascension of the cutout centre"),
                ("DEC_OBJ", coord.dec.deg, "[deg] declination of the cutout centre"),
                ("ORIG_FLE", layer.filename),
                ("FILENAME", self.name),
            ],
        )
        self.primary = hdu_with_header(fits.PrimaryHDU, primary)
        # The extensions' HDUs are made now, ~0.3 ms of astropy's each: a header that comes with
        # the pixels (a remote WHT's) then only needs editing. Their data: ``pixels`` (the
        # arrays remote reads write into), 0 until `finish`, or for a ``streamed`` cutout a
        # placeholder: its pixels go into its file (`writing`).
        make = placeholder if streamed else _new_pixels
        pixels = pixels or {ext: make(window.shape) for ext in EXTENSIONS}
        self.hdus = {ext: fits.ImageHDU(data=pixels[ext]) for ext in EXTENSIONS}
        self.made_from: dict[str, fits.Header | HDUInfo] = {}  # the layer header of each extension

    def add(self, ext: str, header: fits.Header | HDUInfo) -> None:
        """Give extension ``ext`` its header, made from the layer's ``header``."""
        self.hdus[ext].header = cut_header(header, self.window, self.layer.filename)
        self.made_from[ext] = header

    @contextmanager
    def writing(self, out_dir, headers: dict[str, fits.Header | HDUInfo]) -> Iterator[LaidOutFITS]:
        """The cutout's file in ``out_dir``, laid out from the layer's ``headers``, for its pixels
        to be written (`put`); it takes its name when the block ends without an error."""
        for ext in EXTENSIONS:
            self.add(ext, headers[ext])
        with atomic_target(Path(out_dir) / safe_filename(self.name)) as part:
            yield LaidOutFITS.create(part, [self.primary, *self.hdus.values()])

    def rows_of(self, rows: slice) -> slice:
        """The cutout's rows that hold the layer's rows ``rows``."""
        dy = self.window.offset[1]
        return slice(rows.start - dy, rows.stop - dy)

    def put(self, file: LaidOutFITS, ext: str, rows: slice, piece: np.ndarray) -> None:
        """Write ``piece``, the box's columns of the layer's rows ``rows`` of ``ext``, into the
        cutout's ``file``; rows of zeros (no data) are left unwritten, holes that take no disk."""
        if piece.any():
            ext_index, columns = 1 + EXTENSIONS.index(ext), self.window.small[1]
            with file.rows(ext_index, self.rows_of(rows), columns, overwritten=True) as block:
                block[:, self.window.small[1]] = piece

    def opened(self, out_dir) -> fits.HDUList:
        """The cutout's file in ``out_dir``, memory-mapped (`~glue_mvmcut.core.fitsfile.open_mapped`)."""
        return open_mapped(Path(out_dir) / safe_filename(self.name))

    def finish(self, headers: dict[str, fits.Header | HDUInfo], pieces) -> fits.HDUList:
        """The HDUList, with each extension (its header made from ``headers`` if not yet)
        holding its piece of the layer's pixels (copied, unless read into it already)."""
        out = fits.HDUList([self.primary])
        for ext, piece in zip(EXTENSIONS, pieces, strict=True):
            if self.made_from.get(ext) is not headers[ext]:
                self.add(ext, headers[ext])
            hdu = self.hdus[ext]
            if not np.may_share_memory(piece, hdu.data):
                hdu.data[self.window.small] = piece
            out.append(hdu)
        log.debug("Cut %s: %s px", self.name, self.window.shape)
        return out
