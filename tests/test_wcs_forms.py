"""A WCS in any valid form — CD, PC + CDELT, CDELT alone, CDELT + CROTA2 — cuts, combines and
loads exactly as the CD matrix real MVM layers carry."""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from sameness import same_as_local

from glue_mvmcut.core.combine import combine_cutouts
from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.hapcut import mvm_combine
from glue_mvmcut.testing.headers import WCS_FORMS
from glue_mvmcut.testing.server import MastServer
from glue_mvmcut.testing.synth import FIELDS, LayerSpec, build_archive

CORNER = (84.9208, -69.1467)  # where four skycells of p0081 meet
LINEAR = {
    "cd": {"CD1_1", "CD2_2"},
    "pc": {"PC1_1", "PC2_2", "CDELT1", "CDELT2"},
    "cdelt": {"CDELT1", "CDELT2"},
    "crota": {"CDELT1", "CDELT2", "CROTA2"},
}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """The same small field (four skycells, one band) written in every WCS form."""
    field = dataclasses.replace(
        FIELDS["lmc"], radius=3.0, layers=(LayerSpec("acs", "wfc", "f814w"),), n_stars=40, n_galaxies=2
    )
    return {
        form: build_archive(
            tmp_path_factory.mktemp(form), dataclasses.replace(field, name=f"corner-{form}", wcs_form=form)
        )
        for form in WCS_FORMS
    }


def _cutouts(archive):
    return [
        cut_layer(archive.directory / rec.filename, CORNER, 4)
        for rec in sorted(archive.layers, key=lambda r: r.filename)
    ]


@pytest.mark.parametrize("form", WCS_FORMS)
def test_layers_in_every_form_cut_and_combine_as_cd_ones(forms, form):
    reference, cutouts = _cutouts(forms["cd"]), _cutouts(forms[form])
    assert len(cutouts) == 4
    for mine, theirs in zip(cutouts, reference, strict=True):
        header = mine["SCI"].header
        assert LINEAR[form] <= set(header) and not ({"CD1_1", "PC1_1", "CROTA2"} - LINEAR[form]) & set(header)
        for ext in ("SCI", "WHT"):
            np.testing.assert_array_equal(mine[ext].data, theirs[ext].data)
        np.testing.assert_allclose(
            WCS(header).pixel_scale_matrix, WCS(theirs["SCI"].header).pixel_scale_matrix, rtol=1e-15, atol=0
        )
    ((band, mosaic),) = combine_cutouts(cutouts).items()
    ((_, expected),) = combine_cutouts(reference).items()
    assert mosaic[0].header["COMBMETH"] == "exact paste"  # one grid, whatever the form
    for ext in ("SCI", "WHT"):
        np.testing.assert_array_equal(mosaic[ext].data, expected[ext].data)
    sky = WCS(expected["SCI"].header).pixel_to_world(10, 20)
    assert WCS(mosaic["SCI"].header).pixel_to_world(10, 20).separation(sky).arcsec < 1e-9


@pytest.mark.parametrize("form", ["pc", "crota"])
def test_layers_in_other_forms_cut_by_ranges_as_from_files(forms, form):
    archive = forms[form]
    with MastServer([archive]) as server, using_server(server.url):
        for rec in archive.layers:
            same_as_local(archive.directory, rec.filename, CORNER, 4)


@pytest.mark.parametrize("form", ["pc", "cdelt"])
def test_mvm_combine_and_the_glue_loader_read_every_form(forms, form, tmp_path):
    pytest.importorskip("glue")
    from glue_mvmcut.glue.loader import read_mvm

    files = []
    for cutout in _cutouts(forms[form]):
        files.append(tmp_path / cutout[0].header["FILENAME"])
        cutout.writeto(files[-1])
    (mosaic,) = mvm_combine(files, output_dir=tmp_path / "mosaic")
    ((_, expected),) = combine_cutouts(_cutouts(forms["cd"])).items()
    with fits.open(mosaic) as hdul:
        np.testing.assert_array_equal(hdul["SCI"].data, expected["SCI"].data)
    data = read_mvm(mosaic)
    sky = WCS(expected["SCI"].header).pixel_to_world(5, 7)
    assert data.coords.pixel_to_world(5, 7).separation(sky).arcsec < 1e-9
    np.testing.assert_array_equal(data["WHT"], expected["WHT"].data)
