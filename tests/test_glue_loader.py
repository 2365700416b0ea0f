"""The Qt-free Glue side: data factory, labels, load_mvm and WCS links that carry subsets."""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

pytest.importorskip("glue")

from glue.core import Data, DataCollection
from glue.core.data_factories import find_factory, load_data
from glue.core.roi import RectangularROI
from glue.core.subset import RoiSubsetState

from glue_mvmcut import NotMVMFileError, cutout_mosaic
from glue_mvmcut.glue import setup
from glue_mvmcut.glue.loader import MVM_FACTORY_LABEL, load_mvm, read_mvm

LMC = (84.9208, -69.1467)


@pytest.fixture(scope="module")
def written(tmp_path_factory, _server):
    from glue_mvmcut.core.endpoints import using_server

    out = tmp_path_factory.mktemp("glue")
    with using_server(_server.url):
        result = cutout_mosaic(LMC, 10, filters=["f814w", "f160w"], out_dir=out)
    return result


def test_setup_registers_one_factory_above_the_fits_reader():
    from glue.config import data_factory

    setup()
    setup()  # glue calls it once; calling again must not register twice
    ours = [m for m in data_factory.members if m.label == MVM_FACTORY_LABEL]
    fits_reader = [m for m in data_factory.members if m.label == "FITS file"]
    assert len(ours) == 1 and ours[0].priority > fits_reader[0].priority


def test_setup_has_the_collector_leave_what_glue_loaded_alone():
    """Every object there when Glue loads its plugins is frozen (out of the collector's scans)."""
    script = (
        "import gc; import glue_qt.app; from glue_mvmcut.glue import setup; "
        "before = len(gc.get_objects()); setup(); print(before, gc.get_freeze_count(), len(gc.get_objects()))"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    before, frozen, tracked = map(int, ran.stdout.split())
    assert before > 100_000 and frozen >= before and tracked == 0


def test_mosaics_and_cutouts_open_as_one_data_with_sci_wht_and_wcs(written):
    setup()
    mosaic = next(p for p in written.paths["mosaics"] if p.name.endswith("_acs_wfc_f814w.fits"))
    assert find_factory(str(mosaic)) is read_mvm
    data = load_data(str(mosaic))
    assert data.label == "ACS/WFC F814W mosaic"
    assert [c.label for c in data.main_components] == ["SCI", "WHT"]
    assert [c.label for c in data.world_component_ids] == ["Declination", "Right Ascension"]
    with fits.open(mosaic) as hdul:
        np.testing.assert_array_equal(data["SCI"], hdul["SCI"].data)
    cutout = next(
        p for p in written.paths["cutouts"] if "p0081x14y15" in p.name and p.name.endswith("f814w.fits")
    )
    assert load_data(str(cutout)).label == "ACS/WFC F814W p0081x14y15"
    coarse = next(p for p in written.paths["mosaics"] if p.name.endswith("_coarse.fits"))
    assert load_data(str(coarse)).label == "WFC3/IR F160W coarse mosaic"


def test_other_fits_files_keep_glues_reader(tmp_path, written):
    setup()
    plain = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((8, 8), np.float32))]).writeto(plain)
    assert find_factory(str(plain)) is not read_mvm
    renamed = tmp_path / "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f814w.fits"
    renamed.write_bytes(plain.read_bytes())  # an MVM name, but no SCI/WHT inside
    assert find_factory(str(renamed)) is not read_mvm


def test_load_mvm_adds_linked_data_and_subsets_cross_grids(mast, cache):
    collection = DataCollection()
    new = load_mvm(collection, LMC, 10, filters=["f814w", "f160w"])
    labels = [d.label for d in new]
    assert labels[:4] == [
        "ACS/WFC F814W jbp505jg mosaic",
        "ACS/WFC F814W mosaic",
        "WFC3/IR F160W mosaic",
        "WFC3/IR F160W coarse mosaic",
    ]
    assert len(new) == 4 + 16 and list(collection) == new
    assert len(collection.external_links) == len(new) - 1  # a star around the first mosaic
    fine, coarse = new[1], new[3]
    assert fine.shape == (250, 250) and coarse.shape == (83, 83)
    # A 50 x 50 px (2" x 2") box at the centre of the fine F814W mosaic...
    state = RoiSubsetState(
        xatt=fine.pixel_component_ids[1],
        yatt=fine.pixel_component_ids[0],
        roi=RectangularROI(99.5, 149.5, 99.5, 149.5),
    )
    collection.new_subset_group(label="box", subset_state=state)
    assert fine.subsets[0].to_mask().sum() == 50 * 50
    # ...selects the same 2" x 2" of sky on the 0.12"/px coarse grid (16.7 px a side), centred,
    # through two links (fine -> reference mosaic -> coarse).
    coarse_mask = coarse.subsets[0].to_mask()
    assert 16 * 16 <= coarse_mask.sum() <= 18 * 18
    ys, xs = np.nonzero(coarse_mask)
    assert abs(xs.mean() - 41) < 1 and abs(ys.mean() - 41) < 1
    # And on a cutout of one skycell, whose grid is the fine mosaic's shifted by whole pixels.
    cutout = next(d for d in new[4:] if d.label == "ACS/WFC F814W p0081x14y14")
    assert cutout.subsets[0].to_mask().sum() == 50 * 50


@pytest.mark.parametrize("block_mb", [None, 0.05], ids=["held", "memory-mapped"])
def test_a_band_of_one_cutout_loads_once_as_its_mosaic(mast, tmp_path, block_mb):
    """One skycell's two F814W layers (two bands): each band's single cutout stands for its
    mosaic on disk, and in the result when memory-mapped (else the mosaic is made when asked
    for): a mosaic Data each, of the file's pixels; the cutouts' own Data only when held."""
    from glue_mvmcut.core.config import conf
    from glue_mvmcut.core.mast import query_layers

    table = query_layers(LMC, 20, filters=["f814w"])
    one = table[["p0081x15y15" in name for name in table["productFilename"]]]
    collection = DataCollection()
    with conf.set_temp("block_mb", block_mb or conf.block_mb):
        new = load_mvm(collection, LMC, 20, layers=one, out_dir=tmp_path)
    mosaics = ["ACS/WFC F814W jbp505jg mosaic", "ACS/WFC F814W mosaic"]
    cutouts = ["ACS/WFC F814W jbp505jg p0081x15y15", "ACS/WFC F814W p0081x15y15"]
    assert [d.label for d in new] == (mosaics if block_mb else mosaics + cutouts)
    files = sorted(p.name for p in tmp_path.glob("*.fits"))
    assert len(files) == 2 and all(name.startswith("hst_cutout_skycell-p0081x15y15-") for name in files)
    standing = new[2:] if not block_mb else new  # the Data whose file stands for each mosaic
    assert sorted(d.meta["FILENAME"] for d in standing) == files
    for mosaic, cutout in zip(new[:2], standing, strict=True):  # (memory-mapped: one Data)
        with fits.open(tmp_path / cutout.meta["FILENAME"]) as written:
            np.testing.assert_array_equal(cutout["SCI"], written["SCI"].data)
            np.testing.assert_array_equal(mosaic["SCI"], written["SCI"].data)


def test_box_from_pixels_on_a_mosaic(written):
    from astropy.wcs import WCS

    from glue_mvmcut.glue.loader import box_from_pixels

    mosaic = next(p for p in written.paths["mosaics"] if p.name.endswith("_acs_wfc_f814w.fits"))
    with fits.open(mosaic) as hdul:
        wcs = WCS(hdul["SCI"].header)
    ra, dec, width, height = box_from_pixels(wcs, 74.5, 174.5, 99.5, 149.5)  # 100 x 50 px
    assert (ra, dec) == pytest.approx(LMC, abs=0.04 / 3600)
    assert (width, height) == pytest.approx((4.0, 2.0), rel=1e-3)
    assert box_from_pixels(wcs, 124, 124.5, 124, 124)[2:] == (20.0, 20.0)  # a click


def test_a_scaled_integer_layer_opens_with_its_physical_values(scaled_archive):
    path = next(scaled_archive.glob("*p1889*_f814w_*.fits"))
    data = read_mvm(str(path))
    with fits.open(path, memmap=False) as hdul:
        expected = hdul["SCI"].data
    assert np.isnan(expected).sum() == 12
    np.testing.assert_array_equal(data["SCI"], expected)


def test_files_astropy_would_hang_on_are_not_claimed(tmp_path, lmc_archive):
    import os

    from glue_mvmcut.glue.loader import is_mvm_fits

    name = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"
    os.mkfifo(tmp_path / name)
    assert is_mvm_fits(str(tmp_path / name)) is False  # a FIFO: never opened
    data = (lmc_archive.directory / name).read_bytes()
    at = data.index(b"NAXIS1  =", data.index(b"EXTNAME = 'SCI") - 2880)
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / name
    bad.write_bytes(data[:at] + b"NAXIS1  =                 -720".ljust(80) + data[at + 80 :])
    assert is_mvm_fits(str(bad)) is False
    with pytest.raises(NotMVMFileError, match="NAXIS1 = -720, not a length"):
        read_mvm(str(bad))
    assert is_mvm_fits(str(lmc_archive.directory / name)) is True


def test_images_on_one_tangent_plane_are_linked_exactly_by_an_affine_map(written):
    """Fine and coarse mosaics and the cutouts of one projection cell: the affine link agrees
    with astropy's sky transform to 1e-6 px, both ways; images of another cell get a WCSLink."""
    from astropy.wcs.utils import pixel_to_pixel
    from glue.plugins.wcs_autolinking.wcs_autolinking import WCSLink

    from glue_mvmcut.glue.links import TangentPlaneLink, tangent_plane_link, wcs_links

    data = [read_mvm(str(p)) for p in written.paths["mosaics"] + written.paths["cutouts"]]
    reference = next(d for d in data if d.label == "ACS/WFC F814W mosaic")
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-0.5, 249.5, 200), rng.uniform(-0.5, 249.5, 200)
    scales = set()
    for other in data:
        link = tangent_plane_link(reference, other)
        assert isinstance(link, TangentPlaneLink), other.label
        expected = pixel_to_pixel(reference.coords, other.coords, x, y)
        np.testing.assert_allclose(link.forwards(x, y), expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(link.backwards(*expected), (x, y), rtol=0, atol=1e-6)
        scales.add(round(link.matrix[0, 0], 9))
    assert scales == {1.0, round(1 / 3, 9)}  # same grid, or fine to coarse
    # Another projection cell's tangent plane: Glue's WCSLink.
    elsewhere = read_mvm(str(written.paths["mosaics"][0]))
    elsewhere.coords.wcs.crval = elsewhere.coords.wcs.crval + [0.5, 0.0]
    elsewhere.label = "another cell"
    assert tangent_plane_link(reference, elsewhere) is None
    links = wcs_links([reference, elsewhere])
    assert len(links) == 1 and isinstance(links[0], WCSLink)


def test_links_survive_a_saved_session(written, tmp_path):
    from glue.core.state import GlueSerializer, GlueUnSerializer

    from glue_mvmcut.glue.links import TangentPlaneLink
    from glue_mvmcut.glue.loader import Prepared, add_prepared, wcs_links

    data = [read_mvm(str(p)) for p in written.paths["mosaics"]]
    collection = DataCollection()
    add_prepared(collection, Prepared(data, wcs_links(data)))
    restored = GlueUnSerializer.loads(GlueSerializer(collection).dumps()).object("__main__")
    links = [link for link in restored.external_links if isinstance(link, TangentPlaneLink)]
    assert len(links) == len(data) - 1
    original = {(k.data1.label, k.data2.label): k.matrix for k in collection.external_links}
    for link in links:
        np.testing.assert_array_equal(link.matrix, original[link.data1.label, link.data2.label])


def _steps(data, links: dict) -> dict:
    """How many links deep ``data`` derives each component of ``links`` (component -> the link
    that derives it)."""

    def steps(cid):
        if cid in data.main_components + data.coordinate_components:
            return 0
        return 1 + max((steps(c) for c in links[cid].get_from_ids()), default=0)

    return {cid: steps(cid) for cid in links}


def _derived_steps(data) -> dict:
    """`_steps` of what the last link update set on ``data``."""
    return _steps(data, {cid: c.link for cid, c in data._externally_derivable_components.items()})


def test_link_updates_find_what_glues_own_find(written):
    """Three loads of the same 20 Data, and images linked by identity links (pixel-aligned: a
    chain of two, one with its axes swapped): after an update, every Data derives the same
    components as after Glue's own, each by as few links, and is pixel-aligned with the same
    Data in the same order."""
    from glue.core.link_helpers import LinkSame
    from glue.core.link_manager import LinkManager

    from glue_mvmcut.glue.derivable import GLUES_OWN, update_externally_derivable_components
    from glue_mvmcut.glue.links import link_roots
    from glue_mvmcut.glue.loader import Prepared, add_prepared, wcs_links

    collection = DataCollection()
    for load in range(3):
        data = [read_mvm(str(p)) for p in written.paths["mosaics"] + written.paths["cutouts"]]
        add_prepared(collection, Prepared(data, wcs_links(data, link_roots(collection))))
        if load == 0:
            first = dict(collection[0]._externally_derivable_components)
    assert len(collection) == 60 and len(collection.external_links) == 59  # one per Data added
    # What the first Data derived after the first load, it derives by the same links through
    # the same DerivedComponents (not made anew at each update).
    assert len(first) == 19 * 4 and all(
        collection[0]._externally_derivable_components[cid] is component for cid, component in first.items()
    )
    a, b, c, swapped = (Data(label=name, x=np.zeros((3, 3))) for name in "abcs")
    collection.extend([a, b, c, swapped, Data(label="1-d", y=np.zeros(4))])
    pixels = [d.pixel_component_ids for d in (a, b, c, swapped)]
    collection.add_link(
        [LinkSame(pixels[0][i], pixels[1][i]) for i in (0, 1)]
        + [LinkSame(pixels[1][i], pixels[2][i]) for i in (0, 1)]
        + [LinkSame(pixels[0][i], pixels[3][1 - i]) for i in (0, 1)]
    )
    assert LinkManager.update_externally_derivable_components is update_externally_derivable_components
    glues_own = GLUES_OWN["update_externally_derivable_components"]
    assert glues_own.__module__ == "glue.core.link_manager"

    def outcome():
        return [
            (
                _derived_steps(data),
                {id(other): order for other, order in data._pixel_aligned_data.items()},
            )
            for data in collection
        ]

    ours = outcome()  # as the last add_link left it
    glues_own(collection._link_manager)
    assert ours == outcome()
    assert ours[collection.index(c)][1] == {id(a): [0, 1], id(b): [0, 1], id(swapped): [1, 0]}
    assert sum(len(aligned) for _, aligned in ours) == 12  # a, b, c and s with each other only
    assert min(len(derived) for derived, _ in ours[:60]) > 200  # the WCS-linked images: everything


def test_link_updates_go_on_from_the_last_and_start_over_when_links_go(monkeypatch):
    """After every update each Data derives what Glue's own link discovery finds at that point,
    each component by as few links, and is pixel-aligned with the same Data. While links and
    Data are only added (loads, one bridging two groups, a shortcut), only new Data are searched
    from scratch; once a link or a Data goes away, all are."""
    from glue.core.link_helpers import LinkSame, LinkTwoWay
    from glue.core.link_manager import discover_links, equivalent_pixel_cids

    from glue_mvmcut.glue.derivable import LinkIndex, fast_link_updates

    fast_link_updates()
    searched = []
    derivable = LinkIndex.derivable
    monkeypatch.setattr(
        LinkIndex, "derivable", lambda index, data: searched.append(data.label) or derivable(index, data)
    )

    def tie(one, other):  # both pixel axes, each a factor of 2 (not an identity)
        return [
            LinkTwoWay(p, q, functools.partial(np.multiply, 2), functools.partial(np.multiply, 0.5))
            for p, q in zip(one.pixel_component_ids, other.pixel_component_ids, strict=True)
        ]

    def state():
        """Ours, checked against Glue's own: Data -> (derived component -> steps, aligned Data)."""
        manager = collection._link_manager
        links = manager._links | manager._inverse_links
        outcome = {}
        for data in collection:
            ours = _steps(data, {cid: c.link for cid, c in data._externally_derivable_components.items()})
            assert ours == _steps(data, discover_links(data, links)), data.label
            aligned = {o.label: order for o, order in data._pixel_aligned_data.items()}
            glues = {o.label: equivalent_pixel_cids(o, data) for o in collection if o is not data}
            assert aligned == {label: order for label, order in glues.items() if order is not None}
            outcome[data.label] = (sorted((c.parent.label, n) for c, n in ours.items()), aligned)
        searched.clear()
        return outcome

    a, b, c, d, e = (Data(label=name, x=np.zeros((2, 3))) for name in "abcde")
    collection = DataCollection([a, b, c, d])
    with collection.delay_link_manager_update():
        collection.add_link(tie(a, b) + tie(c, d))  # two groups
    assert sorted(searched) == ["a", "b", "c", "d"]
    assert state()["a"] == ([("b", 1), ("b", 1)], {})
    kept = dict(a._externally_derivable_components)

    with collection.delay_link_manager_update():  # a load bridging them
        collection.append(e)
        collection.add_link(tie(b, e) + tie(e, c))
    assert searched == ["e"]
    assert state()["a"] == ([("b", 1)] * 2 + [("c", 3)] * 2 + [("d", 4)] * 2 + [("e", 2)] * 2, {})
    assert all(a._externally_derivable_components[cid] is component for cid, component in kept.items())

    shortcut = [LinkSame(p, q) for p, q in zip(a.pixel_component_ids, c.pixel_component_ids, strict=True)]
    collection.add_link(shortcut)  # identity links: c and d come closer to a, a and c align
    assert searched == []
    assert state()["a"] == ([("b", 1)] * 2 + [("c", 1)] * 2 + [("d", 2)] * 2 + [("e", 2)] * 2, {"c": [0, 1]})

    with collection.delay_link_manager_update():
        for link in shortcut:
            collection.remove_link(link)
    assert sorted(searched) == ["a", "b", "c", "d", "e"]
    assert state()["a"] == ([("b", 1)] * 2 + [("c", 3)] * 2 + [("d", 4)] * 2 + [("e", 2)] * 2, {})

    collection.remove(e)  # and its links (Glue updates after each): the groups part again
    assert set(searched) == {"a", "b", "c", "d"}
    assert state() == {
        "a": ([("b", 1)] * 2, {}),
        "b": ([("a", 1)] * 2, {}),
        "c": ([("d", 1)] * 2, {}),
        "d": ([("c", 1)] * 2, {}),
    }


def test_a_load_planned_off_the_gui_thread_is_set_as_planned_unless_the_collection_changed(
    written, monkeypatch
):
    """A load's links, and what every Data will derive through them, are planned from the
    collection's `linked_so_far` (on a worker, in the dialog); adding the load sets the plan
    with no search, and each Data derives what Glue's own link discovery finds, by as few
    links, as after an update without a plan. A plan the collection no longer fits (a Data
    added meanwhile) is left aside: the update searches, and finds the same."""
    from glue.core.link_manager import discover_links

    from glue_mvmcut.glue.derivable import LinkIndex
    from glue_mvmcut.glue.links import linked_so_far
    from glue_mvmcut.glue.loader import Prepared, add_prepared

    searches = []

    def counted(search):
        return lambda *args: searches.append(1) or search(*args)

    for name in ("derivable", "extend"):
        monkeypatch.setattr(LinkIndex, name, counted(getattr(LinkIndex, name)))

    def load(collection, planned=True):
        data = [read_mvm(str(p)) for p in written.paths["mosaics"] + written.paths["cutouts"]]
        links, plan = linked_so_far(collection).links_for(data)
        return Prepared(data, links, "", plan if planned else None)

    def outcome(collection):
        """For each Data, what it derives: (which Data's component, its label, steps), checked
        against Glue's own discovery."""
        manager = collection._link_manager
        links = manager._links | manager._inverse_links
        found = []
        for data in collection:
            ours = sorted(
                (collection.index(cid.parent), cid.label, steps)
                for cid, steps in _derived_steps(data).items()
            )
            glues = discover_links(data, links)
            assert set(glues) == set(data.externally_derivable_components), data.label
            found.append(ours)
        return found

    planned, unplanned = DataCollection(), DataCollection()
    for _ in range(3):
        prepared = load(planned)
        searches.clear()
        add_prepared(planned, prepared)
        assert searches == []  # set as planned
        add_prepared(unplanned, load(unplanned, planned=False))
    assert outcome(planned) == outcome(unplanned)
    assert len(planned) == 60 and len(outcome(planned)[0]) == 59 * 4

    prepared = load(planned)
    planned.append(read_mvm(str(written.paths["mosaics"][0])))  # the collection changed meanwhile
    searches.clear()
    add_prepared(planned, prepared)
    assert len(searches) == len(planned)  # each Data's search extended, or made for the new
    outcome(planned)
    assert len(planned.external_links) == 59 + 20  # the load's 20 links; the Data added alone none


def test_load_mvm_without_an_application_opens_no_viewer(mast, cache):
    collection = DataCollection()
    with pytest.raises(TypeError, match="viewers=True needs a Glue application"):
        load_mvm(collection, LMC, 4, filters=["f814w"], viewers=True)
    assert len(collection) == 0  # refused before any work


# bqplot-linlog's axis passes traitlets an argument it does not take; traitlets warns.
@pytest.mark.filterwarnings("ignore:Passing unrecognized arguments to super:DeprecationWarning")
def test_load_mvm_in_a_notebook_opens_linked_viewers(mast, cache):
    """glue-jupyter's application: Data, links and one bqplot image viewer per mosaic."""
    glue_jupyter = pytest.importorskip("glue_jupyter")
    from glue_mvmcut.glue import load_mvm as exported
    from glue_mvmcut.glue.links import TangentPlaneLink

    app = glue_jupyter.jglue()
    new = exported(app, LMC, 4, filters=["f814w"])
    assert [d.label for d in new[:2]] == ["ACS/WFC F814W jbp505jg mosaic", "ACS/WFC F814W mosaic"]
    assert len(new) == 2 + 8 and list(app.data_collection) == new
    links = app.data_collection.external_links
    assert len(links) == len(new) - 1 and all(isinstance(link, TangentPlaneLink) for link in links)
    assert [type(v).__name__ for v in app.viewers] == ["BqplotImageView", "BqplotImageView"]
    assert [v.state.title for v in app.viewers] == [
        "ACS/WFC F814W jbp505jg mosaic · 84.92080 -69.14670 · 4″",
        "ACS/WFC F814W mosaic · 84.92080 -69.14670 · 4″",
    ]
    assert [v.state.layers[0].attribute.label for v in app.viewers] == ["SCI", "SCI"]
