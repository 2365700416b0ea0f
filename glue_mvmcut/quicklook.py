"""PNG quick-looks of mosaics and cutouts (matplotlib, no pyplot, no display needed)."""

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from astropy.wcs import WCS

from .core.files import write_atomically

__all__ = ["save_quicklook"]


def save_quicklook(hdul: fits.HDUList, path, *, title: str | None = None) -> Path:
    """Save SCI of ``hdul`` as a PNG with RA/Dec axes: asinh stretch over the 99.5% interval of
    the pixels that have data (WHT > 0), no-data pixels black.

    Returns the path written (atomically).
    """
    from matplotlib.figure import Figure  # imported here: matplotlib is only needed for pictures

    sci = np.asarray(hdul["SCI"].data, dtype=float)
    has_data = np.asarray(hdul["WHT"].data) > 0
    values = sci[has_data] if has_data.any() else sci.ravel()
    norm = ImageNormalize(values, interval=PercentileInterval(99.5), stretch=AsinhStretch(0.05))
    figure = Figure(figsize=(6, 6), dpi=100)
    axes = figure.add_subplot(projection=WCS(hdul["SCI"].header).celestial)
    axes.imshow(np.where(has_data, sci, np.nan), origin="lower", cmap="gray", norm=norm)
    axes.set_facecolor("black")
    axes.set_xlabel("Right Ascension")
    axes.set_ylabel("Declination")
    axes.set_title(title or hdul[0].header.get("FILENAME", ""), fontsize=8)
    return write_atomically(
        Path(path), lambda partial: figure.savefig(partial, format="png", bbox_inches="tight")
    )
