"""PNG quick-looks of mosaics and cutouts (matplotlib, no pyplot, no display needed): a title
that tells one band, exposure, scale, target and box from another, a colour bar in the image's
unit, a north/east compass and a scale bar in arcsec."""

from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from .core.bands import band_of
from .core.files import write_atomically
from .core.fitsfile import read_rows

__all__ = ["quicklook_title", "save_quicklook"]

_SCALE_BARS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)  # arcsec


def quicklook_title(hdul: fits.HDUList) -> str:
    """Two lines: the band (instrument/detector filter), its exposure or "all exposures" and its
    pixel scale; then the target (RA_OBJ, DEC_OBJ) and the box in arcsec."""
    band = band_of(hdul)
    sci = hdul["SCI"]
    scale = _arcsec_per_pixel(WCS(sci.header).celestial)
    exposure = f"exposure {band.exposure}" if band.exposure else "all exposures"
    what = f"{band.instrument.upper()}/{band.detector.upper()} {band.filter.upper()}"
    ny, nx = sci.shape
    head = hdul[0].header
    where = (
        f"{head['RA_OBJ']:.5f} {head['DEC_OBJ']:+.5f}" if "RA_OBJ" in head and "DEC_OBJ" in head else "box"
    )
    box = f'{nx * scale:.3g}" × {ny * scale:.3g}"'
    return f'{what} · {exposure} · {band.scale} {scale:.2f}"/px\n{where} · {box}'


def save_quicklook(hdul: fits.HDUList, path, *, title: str | None = None) -> Path:
    """Save SCI of ``hdul`` as a PNG with RA/Dec axes: asinh stretch over the 99.5% interval of
    the pixels that have data (WHT > 0), no-data pixels black, a colour bar labelled with BUNIT,
    a compass and a scale bar; ``title`` defaults to `quicklook_title`.

    Returns the path written (atomically).
    """
    from matplotlib.figure import Figure  # imported here: matplotlib is only needed for pictures

    sci, has_data, wcs = _shown(hdul)
    values = sci[has_data] if has_data.any() else sci.ravel()
    norm = ImageNormalize(values, interval=PercentileInterval(99.5), stretch=AsinhStretch(0.05))
    figure = Figure(figsize=(7, 6.4), dpi=100)
    axes = figure.add_subplot(projection=wcs)
    image = axes.imshow(np.where(has_data, sci, np.nan), origin="lower", cmap="gray", norm=norm)
    axes.set_facecolor("black")
    axes.set_xlabel("Right Ascension", fontsize=11)
    axes.set_ylabel("Declination", fontsize=11)
    axes.set_title(title or quicklook_title(hdul), fontsize=11)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label(str(hdul["SCI"].header.get("BUNIT", "")) or "SCI", fontsize=10)
    _compass(axes, wcs, sci.shape)
    _scale_bar(axes, wcs, sci.shape)
    return write_atomically(
        Path(path), lambda partial: figure.savefig(partial, format="png", bbox_inches="tight")
    )


#: Most pixels a quick-look shows on a side: larger images show every n-th row and column.
SHOWN_PIXELS = 2048


def _shown(hdul: fits.HDUList) -> tuple[np.ndarray, np.ndarray, WCS]:
    """SCI (float), where WHT > 0, and the celestial WCS of what a quick-look shows: the image,
    or of one larger than `SHOWN_PIXELS` on a side every n-th row and column, read a row at a
    time (a 3600" mosaic is 32 GB per array)."""
    sci, wht = hdul["SCI"], hdul["WHT"]
    step = max(1, -(-max(sci.shape) // SHOWN_PIXELS))
    columns = slice(None, None, step)
    rows = range(0, sci.shape[0], step)
    shown_sci = np.array([read_rows(sci, slice(y, y + 1), columns)[0] for y in rows], dtype=float)
    shown_wht = np.array([read_rows(wht, slice(y, y + 1), columns)[0] for y in rows])
    return shown_sci, shown_wht > 0, _every_nth(WCS(sci.header).celestial, step)


def _every_nth(wcs: WCS, step: int) -> WCS:
    """The WCS of every ``step``-th pixel of ``wcs``'s grid, from the first. By hand: astropy's
    slicing with a step scales CDELT, which a CD matrix (MVM's) overrides."""
    if step == 1:
        return wcs
    thinned = wcs.deepcopy()
    thinned.wcs.crpix = (thinned.wcs.crpix - 1) / step + 1
    if thinned.wcs.has_cd():
        thinned.wcs.cd = thinned.wcs.cd * step
    else:
        thinned.wcs.cdelt = thinned.wcs.cdelt * step
    thinned.wcs.set()
    return thinned


def _arcsec_per_pixel(wcs: WCS) -> float:
    return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600)


def _compass(axes, wcs: WCS, shape) -> None:
    """N and E arrows near the top-left corner, in the directions the WCS gives them."""
    ny, nx = shape
    length = 0.12 * min(nx, ny)
    x0, y0 = 0.22 * nx, 0.78 * ny
    centre = wcs.pixel_to_world(x0, y0)
    step = length * _arcsec_per_pixel(wcs)
    for label, angle in (("N", 0), ("E", 90)):
        tip = centre.directional_offset_by(angle * u.deg, step * u.arcsec)
        x1, y1 = wcs.world_to_pixel(tip)
        axes.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1.5},
        )
        axes.text(
            x0 + 1.25 * (x1 - x0), y0 + 1.25 * (y1 - y0), label, color="yellow", ha="center", va="center"
        )


def _scale_bar(axes, wcs: WCS, shape) -> None:
    """A bar of a round number of arcsec (about a fifth of the width) at the bottom right."""
    ny, nx = shape
    scale = _arcsec_per_pixel(wcs)
    wanted = nx * scale / 5
    arcsec = max([b for b in _SCALE_BARS if b <= wanted * 1.001], default=_SCALE_BARS[0])
    pixels = arcsec / scale
    x1, y = 0.93 * nx, 0.07 * ny
    axes.plot([x1 - pixels, x1], [y, y], color="yellow", lw=2.5)
    text = f'{arcsec:g}"' if arcsec < 60 else f"{arcsec / 60:g}'"
    axes.text(x1 - pixels / 2, y + 0.03 * ny, text, color="yellow", ha="center", va="bottom", fontsize=10)
    axes.set_xlim(-0.5, nx - 0.5)
    axes.set_ylim(-0.5, ny - 0.5)
