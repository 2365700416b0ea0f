"""Loading MVM layers, cutouts and mosaics into Glue, and linking them by WCS. No Qt here.

- `read_mvm` is a Glue data factory: one `~glue.core.Data` per MVM file, with SCI and WHT
  components and the celestial WCS as coordinates; `is_mvm_fits` lets it claim only MVM files
  (by name grammar and by their SCI/WHT headers), so any other FITS file still opens with Glue's
  own reader.
- `prepare_result` builds the Data and links (`~glue_mvmcut.glue.links.wcs_links`) of a
  pipeline result without touching Glue (so a worker thread can do it); `add_prepared` adds
  them to a data collection in one batch.
- `load_mvm` runs the pipeline and does both (and opens viewers when given an application).
- `targets_from_layer` turns a catalogue (a table Data, or a subset of one) into the target table
  of `~glue_mvmcut.core.batch.cutout_batch`; `prepare_batch` makes every finished target's
  mosaics ready to add, linked.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from glue.core import Data
from glue.core.data_collection import DataCollection

from ..core.errors import InvalidNameError
from ..core.files import checked_fits, structure_problem
from ..core.names import CombinedName, mosaic_files, parse_product_name
from .derivable import LinkPlan, expect_plan, fast_link_updates
from .links import LinkedSoFar, linked_so_far, wcs_links
from .viewers import open_jupyter_viewers

__all__ = [
    "MVM_FACTORY_LABEL",
    "MVM_FACTORY_PRIORITY",
    "is_mvm_fits",
    "label_for",
    "mvm_data",
    "read_mvm",
    "Prepared",
    "prepare_result",
    "add_prepared",
    "box_title",
    "open_viewers",
    "load_mvm",
    "box_from_pixels",
    "CLICK_BOX_ARCSEC",
    "targets_from_layer",
    "prepare_batch",
]

log = logging.getLogger(__name__)

MVM_FACTORY_LABEL = "HST MVM layer, cutout or mosaic (glue-mvmcut)"
#: Above Glue's generic FITS reader (100), so MVM files get SCI/WHT as one Data with their WCS.
MVM_FACTORY_PRIORITY = 200


def is_mvm_fits(filename, **kwargs) -> bool:
    """True for an MVM layer, cutout or mosaic file: an MVM name and SCI + WHT image extensions."""
    try:
        parse_product_name(Path(filename).name)
    except (InvalidNameError, TypeError):
        return False
    if structure_problem(filename):  # before astropy: a FIFO blocks it, some headers loop it
        return False
    try:
        with fits.open(filename) as hdul:
            return all(ext in hdul and hdul[ext].header.get("NAXIS") == 2 for ext in ("SCI", "WHT"))
    except (OSError, ValueError):
        return False


def label_for(hdul: fits.HDUList, filename: str | None = None, *, mosaic: bool = False) -> str:
    """ "ACS/WFC F814W mosaic" for a mosaic (or a cutout standing for its band's mosaic, if
    ``mosaic``), "ACS/WFC F814W p0081x14y15" for a layer or cutout."""
    name = parse_product_name(filename or str(hdul[0].header.get("FILENAME", "")))
    where = "mosaic" if mosaic or isinstance(name, CombinedName) else name.skycell.name
    return f"{name.label()} {where}"


def mvm_data(hdul: fits.HDUList, label: str | None = None) -> Data:
    """One Glue Data with SCI and WHT components and the celestial WCS of ``hdul``.

    Each Data gives way first to a thread waiting for the GIL (the GUI's). CPython has the
    thread holding the GIL hand it over only when the waiting one saw no switch for a whole
    switch interval (5 ms); making a Data lets go of the GIL briefly and often (file reads,
    ``os.urandom`` for the UUIDs of ``WCS.celestial``) and takes it straight back, and each such
    release counts as a switch, so the waiting thread never asks: Glue's window waited through
    all of a load's Data (~0.1 s for 25). A sleep of no time lets it in (gaps then ~10 ms).
    """
    time.sleep(0)
    data = Data(
        label=label or label_for(hdul),
        SCI=hdul["SCI"].data,
        WHT=hdul["WHT"].data,
        coords=WCS(hdul["SCI"].header).celestial,
    )
    data.meta.update(
        {
            key: hdul[0].header[key]
            for key in ("FILENAME", "INSTRUME", "DETECTOR", "FILTER", "COMBINE")
            if key in hdul[0].header
        }
    )
    return data


def read_mvm(filename, **kwargs) -> Data:
    """Glue data factory: read an MVM layer, cutout or mosaic (memory-mapped) as one Data.

    Raises
    ------
    NotMVMFileError
        If the file is not a whole FITS file.
    """
    # Memory-mapped arrays stay readable after the file is closed (astropy keeps the mapping).
    with fits.open(checked_fits(filename)) as hdul:
        return mvm_data(hdul, label_for(hdul, Path(filename).name))


#: Box side used when the user clicks instead of dragging a box, in arcsec.
CLICK_BOX_ARCSEC = 20.0


def box_from_pixels(
    wcs, xmin: float, xmax: float, ymin: float, ymax: float
) -> tuple[float, float, float, float]:
    """(ra, dec, width, height) — degrees and arcsec — of a pixel rectangle drawn on an image.

    A rectangle less than two pixels across (a click) gives a `CLICK_BOX_ARCSEC` box around it.
    """
    from astropy.coordinates import SkyCoord

    xc, yc = (xmin + xmax) / 2, (ymin + ymax) / 2
    centre = wcs.pixel_to_world(xc, yc)
    if not isinstance(centre, SkyCoord):
        raise ValueError("The image has no celestial WCS.")
    if xmax - xmin < 2 and ymax - ymin < 2:
        return centre.ra.deg, centre.dec.deg, CLICK_BOX_ARCSEC, CLICK_BOX_ARCSEC
    width = wcs.pixel_to_world(xmin, yc).separation(wcs.pixel_to_world(xmax, yc)).arcsec
    height = wcs.pixel_to_world(xc, ymin).separation(wcs.pixel_to_world(xc, ymax)).arcsec
    return centre.ra.deg, centre.dec.deg, width, height


def _data_collection(target) -> DataCollection:
    if isinstance(target, DataCollection):
        return target
    if hasattr(target, "data_collection"):  # a Glue application or session
        return target.data_collection
    raise TypeError(f"Expected a Glue application, session or DataCollection, got {type(target).__name__}.")


@dataclass
class Prepared:
    """What one load adds to Glue, made ready off the GUI thread.

    Attributes
    ----------
    data : list of `~glue.core.Data`
        Mosaics first, then cutouts.
    links : list
        Links between them and to Data already loaded (`wcs_links`).
    title : str
        What the load shows: target and box, e.g. "NGC 1850 · 30″" (`box_title`).
    plan : `~glue_mvmcut.glue.derivable.LinkPlan` or None
        What every Data will derive once these are added (`LinkedSoFar.links_for`), set by
        Glue's link update if nothing changed meanwhile.
    """

    data: list = field(default_factory=list)
    links: list = field(default_factory=list)
    title: str = ""
    plan: LinkPlan | None = None

    @property
    def mosaics(self) -> list:
        """The mosaics' Data."""
        return [d for d in self.data if d.label.endswith(" mosaic")]


def box_title(target, size) -> str:
    """ "NGC 1850 · 30″" or "84.92080 -69.14670 · 30″ × 20″": a load's target and box, for tab
    and viewer titles. ``target`` is what the user typed or a SkyCoord; ``size`` (ny, nx) arcsec."""
    if hasattr(target, "ra"):
        target = f"{target.ra.deg:.5f} {target.dec.deg:+.5f}"
    ny, nx = (float(v) for v in np.broadcast_to(getattr(size, "value", size), 2))
    box = f"{nx:g}″" if nx == ny else f"{nx:g}″ × {ny:g}″"
    return f"{target} · {box}"


def _links_and_plan(new: list, linked: LinkedSoFar | None) -> tuple[list, LinkPlan | None]:
    """The links of ``new`` and the plan of the update adding them (none without ``linked``)."""
    return linked.links_for(new) if linked is not None else (wcs_links(new), None)


def prepare_result(
    result, *, cutouts: bool = True, linked: LinkedSoFar | None = None, title: str = ""
) -> Prepared:
    """Glue Data for a `~glue_mvmcut.core.pipeline.CutoutResult`'s mosaics (and cutouts), the
    links tying them to each other and to the Data of the collection they will join (its
    `linked_so_far`, read before), and what every Data will then derive. Builds Data and links
    only: safe on a worker thread; add with `add_prepared`."""
    mosaics = list(result.mosaics.values())
    # A band's single cutout may stand for its mosaic (memory-mapped, products="both"): one
    # Data, a mosaic's.
    standing = {id(hdul) for hdul in mosaics} & {id(hdul) for hdul in result.cutouts}
    new = [mvm_data(hdul, label_for(hdul, mosaic=id(hdul) in standing)) for hdul in mosaics]
    if cutouts:
        new += [mvm_data(hdul) for hdul in result.cutouts if id(hdul) not in standing]
    links, plan = _links_and_plan(new, linked)
    return Prepared(new, links, title or box_title(result.coord, result.size), plan)


def _tree_once_per_turn(target) -> None:
    """For glue-qt's application, its data collection tree reacting once per turn to a batch
    (`glue_mvmcut.glue.qt.collection.tree_reacts_once_per_turn`); nothing to do elsewhere."""
    if type(target).__module__.startswith("glue_qt"):
        from .qt.collection import tree_reacts_once_per_turn  # Qt only for glue-qt's application

        tree_reacts_once_per_turn(target)


def add_prepared(app_or_session, prepared: Prepared) -> list[Data]:
    """Add prepared Data and links to Glue in one batch: Glue updates its links once, not once
    per Data and link, setting what the preparing worker planned (`Prepared.plan`) unless the
    collection changed meanwhile, and glue-qt's data collection tree reacts once. Links to Data
    removed meanwhile are dropped. Returns the new Data."""
    collection = _data_collection(app_or_session)
    fast_link_updates()
    expect_plan(collection, prepared.plan)
    _tree_once_per_turn(app_or_session)
    with collection.delay_link_manager_update():
        collection.extend(prepared.data)
        collection.add_link(
            [link for link in prepared.links if link.data1 in collection and link.data2 in collection]
        )
    return prepared.data


def _is_application(target) -> bool:
    return hasattr(target, "new_data_viewer") and hasattr(target, "data_collection")


def open_viewers(app, prepared: Prepared) -> list:
    """One image viewer per mosaic of ``prepared`` in a Glue application: in a new tab named by
    its target and box, tiled (glue-qt, `glue_mvmcut.glue.qt.viewers.open_viewers`), or below
    the notebook cell (glue-jupyter, `~glue_mvmcut.glue.viewers.open_jupyter_viewers`)."""
    if type(app).__module__.startswith("glue_jupyter"):
        return open_jupyter_viewers(app, prepared)
    from .qt.viewers import open_viewers as open_qt_viewers  # Qt only when there are viewers

    return open_qt_viewers(app, prepared)


def load_mvm(
    app_or_session,
    coord,
    size,
    *,
    filters=None,
    layers=None,
    cutouts: bool = True,
    viewers: bool | None = None,
    **kwargs,
) -> list[Data]:
    """Run the pipeline and add its mosaics (and cutouts) to Glue, linked by WCS.

    Parameters
    ----------
    app_or_session : Glue application, session or `~glue.core.data_collection.DataCollection`
        Where the Data go: a glue-qt ``GlueApplication``, a glue-jupyter application
        (``glue_jupyter.jglue()``), or, with no viewers and no Qt, a session or data collection.
    coord, size
        The box, as for `~glue_mvmcut.core.pipeline.cutout_mosaic`.
    filters : sequence of str, optional
        Keep only these filters.
    layers : `~astropy.table.Table`, optional
        Rows of a previous query to use instead of querying.
    cutouts : bool, optional
        Also add each layer's cutout (default True); mosaics are always added.
    viewers : bool, optional
        Open one image viewer per mosaic (`open_viewers`). Default: True for an application,
        False otherwise (a session or data collection has no viewers to open).
    **kwargs
        Passed to `~glue_mvmcut.core.pipeline.cutout_mosaic` (``progress``, ``cancel``,
        ``out_dir``, ``fetch``...).

    Returns
    -------
    list of `~glue.core.Data`
        The mosaics first, then the cutouts.
    """
    from ..core.pipeline import cutout_mosaic  # the pipeline is heavy: only when used

    if viewers is None:
        viewers = _is_application(app_or_session)
    elif viewers and not _is_application(app_or_session):
        raise TypeError("viewers=True needs a Glue application (glue-qt's or glue-jupyter's).")
    result = cutout_mosaic(coord, size, filters=filters, layers=layers, **kwargs)
    linked = linked_so_far(_data_collection(app_or_session))
    title = box_title(coord if isinstance(coord, str) else result.coord, result.size)
    prepared = prepare_result(result, cutouts=cutouts, linked=linked, title=title)
    add_prepared(app_or_session, prepared)
    if viewers:
        open_viewers(app_or_session, prepared)
    return prepared.data


# Catalogue column names that hold positions (compared in lower case), in order of preference.
_RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "ra_j2000", "s_ra", "alpha_j2000", "right ascension")
_DEC_NAMES = (
    "dec",
    "dec_deg",
    "dej2000",
    "decj2000",
    "de_icrs",
    "dec_j2000",
    "s_dec",
    "delta_j2000",
    "declination",
)
_ID_NAMES = ("id", "name", "object", "source_id", "objid")


def _component(data, names):
    by_label = {cid.label.lower(): cid for cid in data.main_components}
    return next((by_label[name] for name in names if name in by_label), None)


def targets_from_layer(layer) -> Table:
    """The target table (``id``, ``ra``, ``dec``) of a catalogue Data or of a subset of one.

    Positions come from columns such as ``ra``/``dec`` or ``RAJ2000``/``DEJ2000`` (degrees).
    ``id`` is the catalogue's ``id`` or ``name`` column if it has one, else the row number in the
    whole catalogue (``0001``, …), so a target keeps its folder whichever subset it is run from.

    Raises
    ------
    ValueError
        If the layer has no RA/Dec columns or selects no rows.
    """
    data = getattr(layer, "data", layer)  # a Subset's parent Data, or the Data itself
    ra, dec = _component(data, _RA_NAMES), _component(data, _DEC_NAMES)
    if ra is None or dec is None or data.ndim != 1:
        raise ValueError(
            f"{layer.label!r} is not a catalogue with RA/Dec columns (looked for ra/dec, "
            "RAJ2000/DEJ2000 and similar, in degrees)."
        )
    rows = np.flatnonzero(layer.to_mask()) if layer is not data else np.arange(data.size)
    if not len(rows):
        raise ValueError(f"{layer.label!r} selects no rows.")
    ids = _component(data, _ID_NAMES)
    width = max(4, len(str(data.size)))
    return Table(
        {
            "id": [str(v) for v in data[ids][rows]]
            if ids is not None
            else [f"{r + 1:0{width}d}" for r in rows],
            "ra": np.asarray(data[ra][rows], dtype=float),
            "dec": np.asarray(data[dec][rows], dtype=float),
        }
    )


def prepare_batch(manifest: Table, out_dir, *, linked: LinkedSoFar | None = None) -> Prepared:
    """The mosaics of every finished target of a batch as Glue Data, labelled with the target id
    ("0001 ACS/WFC F814W mosaic"), and their links, as `prepare_result` makes them. Reads files
    and builds links only: safe on a worker thread; add with `add_prepared`."""
    new = []
    done = manifest[manifest["status"] == "done"]
    for row in done:
        for name in mosaic_files(str(row["files"]).split()):
            data = read_mvm(Path(out_dir) / str(row["id"]) / name)
            data.label = f"{row['id']} {data.label}"
            new.append(data)
    links, plan = _links_and_plan(new, linked)
    return Prepared(new, links, f"{len(done)} targets", plan)
