"""PNG quick-looks worth sharing: titles that tell every mosaic apart, a unit, a compass."""

import numpy as np
import pytest
from matplotlib.image import imread

from glue_mvmcut.core.pipeline import cutout_mosaic
from glue_mvmcut.quicklook import quicklook_title, save_quicklook

LMC = (84.9208, -69.1467)


@pytest.fixture(scope="module")
def demo(_server, tmp_path_factory):
    """The mosaics of ``mvmcut demo``'s box: five bands, two exposures of F814W, two scales of F160W."""
    from glue_mvmcut.core.endpoints import using_server

    with using_server(_server.url):
        return cutout_mosaic(LMC, 10)


def test_every_demo_mosaic_has_its_own_title(demo):
    titles = sorted(quicklook_title(mosaic) for mosaic in demo.mosaics.values())
    assert len(titles) == len(set(titles)) == 5
    assert titles == [
        'ACS/WFC F658N · all exposures · fine 0.04"/px\n84.92080 -69.14670 · 10" × 10"',
        'ACS/WFC F814W · all exposures · fine 0.04"/px\n84.92080 -69.14670 · 10" × 10"',
        'ACS/WFC F814W · exposure jbp505jg · fine 0.04"/px\n84.92080 -69.14670 · 10" × 10"',
        # 83 coarse pixels: the box on the coarse grid
        'WFC3/IR F160W · all exposures · coarse 0.12"/px\n84.92080 -69.14670 · 9.96" × 9.96"',
        'WFC3/IR F160W · all exposures · fine 0.04"/px\n84.92080 -69.14670 · 10" × 10"',
    ]


def test_a_quicklook_is_a_picture_with_its_unit_compass_and_scale_bar(demo, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    real_savefig = Figure.savefig

    def keep(figure, *args, **kwargs):
        figures.append(figure)
        return real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    mosaic = next(iter(demo.mosaics.values()))
    path = save_quicklook(mosaic, tmp_path / "look.png")
    picture = imread(path)
    assert picture.shape[0] > 500 and picture.shape[1] > 500 and np.ptp(picture[..., :3]) > 0.5
    (figure,) = figures
    image_axes, colorbar_axes = figure.axes
    assert colorbar_axes.get_ylabel() == "ELECTRONS/S"
    labels = sorted(text.get_text() for text in image_axes.texts if text.get_text())  # not the arrows
    assert labels == ['2"', "E", "N"]  # a fifth of 10" is 2"
    assert image_axes.get_title() == quicklook_title(mosaic)


def test_a_large_image_shows_every_nth_pixel_read_a_row_at_a_time(demo, tmp_path, monkeypatch):
    """Past SHOWN_PIXELS on a side (2048; 50 here), every n-th row and column, with the WCS of
    that grid: a 3600" mosaic (90000 px) is never read whole."""
    from astropy.wcs import WCS

    from glue_mvmcut import quicklook

    monkeypatch.setattr(quicklook, "SHOWN_PIXELS", 50)
    fine = next(m for m in demo.mosaics.values() if m[0].header["FILENAME"].endswith("_acs_wfc_f814w.fits"))
    sci, has_data, wcs = quicklook._shown(fine)
    assert fine["SCI"].data.shape == (250, 250) and sci.shape == has_data.shape == (50, 50)  # n = 5
    np.testing.assert_array_equal(sci, fine["SCI"].data[::5, ::5].astype(float))
    np.testing.assert_array_equal(has_data, fine["WHT"].data[::5, ::5] > 0)
    full = WCS(fine["SCI"].header).celestial
    for x, y in ((0, 0), (49, 20)):  # pixel (x, y) shown is pixel (5x, 5y) of the image
        assert wcs.pixel_to_world(x, y).separation(full.pixel_to_world(5 * x, 5 * y)).arcsec < 1e-6
    assert imread(save_quicklook(fine, tmp_path / "thinned.png")).shape[2] == 4
