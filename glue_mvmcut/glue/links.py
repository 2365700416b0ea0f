"""Links between Glue Data by WCS that stay cheap however much is loaded.

- `wcs_links` links new Data to each other and to what is already loaded, so a subset drawn on
  one image selects the same sky in all: exactly and cheaply (`TangentPlaneLink`, an affine map)
  between images on one projection cell's tangent plane, by Glue's `WCSLink` otherwise; a star,
  and to one Data per group already linked (`link_roots`), so each load adds as many links as
  it brings Data. `linked_so_far` reads on the GUI thread what a worker needs to make a load's
  links and plan Glue's update of what each Data derives through them
  (`~glue_mvmcut.glue.derivable`).
- `mvm_autolink` is Glue's auto-linker for MVM files opened from File → Open or the ``glue``
  command: they are linked as the dialog links them, at once, and `register_autolinker` keeps
  Glue's WCS auto-linker (and its pop-up) away from them.
"""

import logging
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from glue.core.link_helpers import MultiLink

from .derivable import LinkPlan, LinkState, fast_link_updates, link_state, plan_links

__all__ = [
    "TangentPlaneLink",
    "tangent_plane_link",
    "wcs_links",
    "link_roots",
    "LinkedSoFar",
    "linked_so_far",
    "AUTOLINK_LABEL",
    "is_mvm_data",
    "mvm_autolink",
    "register_autolinker",
]

#: glue-mvmcut's auto-linker as Glue's settings name it (Preferences, auto-linking).
AUTOLINK_LABEL = "MVM cutouts and mosaics (glue-mvmcut)"
#: Glue's own auto-linker for WCS, which suggests a link for every pair of images in a pop-up.
GLUE_WCS_AUTOLINKER = "Astronomy WCS"

log = logging.getLogger(__name__)


def _has_celestial(data) -> bool:
    coords = getattr(data, "coords", None)
    return bool(getattr(coords, "has_celestial", False))


class TangentPlaneLink(MultiLink):
    """An exact affine link between the pixels of two Data whose WCS project the sky onto one
    tangent plane (same projection, reference point and poles; no distortion), as cutouts and
    mosaics of one projection cell do: an integer offset on the same grid, an offset and a factor
    of 3 between fine and coarse. Glue draws and selects through it at the cost of a matrix
    product, where a `WCSLink` goes through the sky for every pixel; it is saved in sessions.

    ``matrix`` (3 × 3) maps ``(x1, y1, 1)`` to ``(x2, y2, 1)``, 0-based pixels.
    """

    display = "Same tangent plane (exact affine)"

    def __init__(self, data1=None, data2=None, matrix=None):
        self.data1, self.data2 = data1, data2
        self.matrix = np.asarray(matrix, dtype=float)
        self._inverse = np.linalg.inv(self.matrix)
        super().__init__(
            data1.pixel_component_ids[::-1],  # (x, y), as WCSLink orders them
            data2.pixel_component_ids[::-1],
            forwards=self.forwards,
            backwards=self.backwards,
            labels1=["x", "y"],
            labels2=["x", "y"],
        )

    @staticmethod
    def _apply(matrix, x, y):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        return (
            matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2],
            matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2],
        )

    def forwards(self, x, y):
        """Pixels of ``data1`` → pixels of ``data2``."""
        return self._apply(self.matrix, x, y)

    def backwards(self, x, y):
        """Pixels of ``data2`` → pixels of ``data1``."""
        return self._apply(self._inverse, x, y)

    def __gluestate__(self, context):
        return {
            "data1": context.id(self.data1),
            "data2": context.id(self.data2),
            "matrix": self.matrix.tolist(),
        }

    @classmethod
    def __setgluestate__(cls, rec, context):
        return cls(context.object(rec["data1"]), context.object(rec["data2"]), rec["matrix"])


def _plane(wcs) -> tuple | None:
    """What fixes a WCS's tangent plane (None if it has distortions or is not celestial 2-D)."""
    if wcs.pixel_n_dim != 2 or not wcs.has_celestial or wcs.has_distortion:
        return None
    w = wcs.wcs
    numbers = (*w.crval, w.lonpole, w.latpole, w.equinox, *(value for *_, value in w.get_pv()))
    return (
        tuple(w.ctype),
        tuple(str(unit) for unit in w.cunit),
        w.radesys,
        tuple(None if np.isnan(x) else float(x) for x in numbers),  # an unset EQUINOX is NaN
    )


def tangent_plane_link(data1, data2) -> "TangentPlaneLink | None":
    """The exact `TangentPlaneLink` from ``data1`` to ``data2`` if their WCS share one tangent
    plane, else None. From intermediate world coordinates ``M (p - r)``, equal for both:
    ``p2 = M2⁻¹ M1 (p1 - r1) + r2``."""
    wcs1, wcs2 = getattr(data1, "coords", None), getattr(data2, "coords", None)
    if not (isinstance(wcs1, WCS) and isinstance(wcs2, WCS)):
        return None
    plane = _plane(wcs1)
    if plane is None or plane != _plane(wcs2):
        return None
    linear = np.linalg.solve(wcs2.pixel_scale_matrix, wcs1.pixel_scale_matrix)
    offset = (wcs2.wcs.crpix - 1) - linear @ (wcs1.wcs.crpix - 1)
    return TangentPlaneLink(data1, data2, np.vstack([np.column_stack([linear, offset]), [0, 0, 1]]))


def wcs_links(new_data, others=()) -> list:
    """Links tying ``new_data`` to each other and to ``others`` (Data already loaded), so that
    selections carry across all of them: a star around the first new Data with a celestial WCS
    (Glue composes links, so n - 1 links do what n(n - 1) / 2 would), each link exact
    (`tangent_plane_link`) where the two share a tangent plane, a `WCSLink` otherwise, none
    where the WCS cannot be linked. Touches no data collection: safe off the GUI thread.

    Give as ``others`` one Data per group already linked together (`link_roots`): each load then
    adds as many links as it brings Data, however many were loaded before.
    """
    # Imported here: it pulls in scipy.optimize (~130 ms), which plugin registration must not pay.
    from glue.plugins.wcs_autolinking.wcs_autolinking import IncompatibleWCS, WCSLink

    celestial = [d for d in new_data if _has_celestial(d)]
    if not celestial:
        return []
    reference = celestial[0]
    links = []
    for other in celestial[1:] + [d for d in others if _has_celestial(d) and d not in new_data]:
        link = tangent_plane_link(reference, other)
        if link is None:
            try:
                link = WCSLink(reference, other)
            except IncompatibleWCS:
                log.info("No WCS link between %s and %s.", reference.label, other.label)
                continue
        links.append(link)
    return links


def _linked(data1, data2) -> bool:
    """True if Glue can already derive ``data1``'s pixel coordinates in ``data2``."""
    return all(cid in data2.externally_derivable_components for cid in data1.pixel_component_ids)


def link_roots(data_collection) -> list:
    """One Data with a celestial WCS per group of such Data already linked together (reads Glue's
    link state: call it on the GUI thread)."""
    roots = []
    for data in data_collection:
        if _has_celestial(data) and not any(_linked(data, root) for root in roots):
            roots.append(data)
    return roots


@dataclass(frozen=True)
class LinkedSoFar:
    """A data collection's links as a load begins, read on the GUI thread (`linked_so_far`) for
    the worker that prepares the load."""

    roots: list  # one Data per group linked together (`link_roots`)
    state: LinkState  # the last link update's outcome (`~glue_mvmcut.glue.derivable.link_state`)

    def links_for(self, new_data: list) -> "tuple[list, LinkPlan | None]":
        """The links of ``new_data`` (`wcs_links`), and what every Data will derive once they
        are added (`~glue_mvmcut.glue.derivable.plan_links`). Safe off the GUI thread."""
        links = wcs_links(new_data, self.roots)
        return links, plan_links(self.state, new_data, links)


def linked_so_far(data_collection) -> LinkedSoFar:
    """What a load's worker needs of ``data_collection``'s links (call it on the GUI thread)."""
    return LinkedSoFar(link_roots(data_collection), link_state(data_collection))


def is_mvm_data(data) -> bool:
    """True for a Glue Data read from an MVM layer, cutout or mosaic (its FILENAME is an MVM
    product name)."""
    from ..core.errors import InvalidNameError
    from ..core.names import parse_product_name

    try:
        parse_product_name(str(getattr(data, "meta", {}).get("FILENAME", "")))
    except InvalidNameError:
        return False
    return _has_celestial(data)


def mvm_autolink(data_collection) -> list:
    """Glue auto-linker: links for the MVM Data not linked to anything yet (opened from files),
    as `wcs_links` makes them, to each other and to one Data per group already linked."""
    data = list(data_collection)
    new = [d for d in data if is_mvm_data(d) and not any(_linked(d, o) for o in data if o is not d)]
    if not new:
        return []
    return wcs_links(new, link_roots([d for d in data if d not in new]))


class _WithoutMVM(list):
    """The Data of a collection but MVM ones, with the collection's links: what Glue's WCS
    auto-linker reads (it iterates the Data and looks at ``external_links``)."""

    def __init__(self, data_collection):
        super().__init__(d for d in data_collection if not is_mvm_data(d))
        self.external_links = data_collection.external_links


def _without_mvm(glue_autolink):
    def autolink(data_collection):
        return glue_autolink(_WithoutMVM(data_collection))

    autolink.leaves_mvm_data_alone = True
    return autolink


def register_autolinker() -> None:
    """Add `mvm_autolink` to Glue's auto-linkers, accepted without asking unless the user chose
    otherwise, have Glue's WCS auto-linker leave MVM Data to it (it would propose a `WCSLink`
    for every pair of images, in a pop-up), and use `fast_link_updates`. Idempotent."""
    # Glue's WCS auto-linker registers itself when its module is imported; make sure it is there
    # to be wrapped, whichever plugin Glue loads first (Glue loads it at start-up anyway).
    import glue.plugins.wcs_autolinking.wcs_autolinking  # noqa: F401
    from glue.config import autolinker, settings

    members = autolinker.members
    for index, (label, function) in enumerate(members):
        if label == GLUE_WCS_AUTOLINKER and not getattr(function, "leaves_mvm_data_alone", False):
            members[index] = (label, _without_mvm(function))
    if not any(label == AUTOLINK_LABEL for label, _ in members):
        autolinker.add(AUTOLINK_LABEL, mvm_autolink)
    if AUTOLINK_LABEL not in settings.AUTOLINK:
        settings.AUTOLINK[AUTOLINK_LABEL] = "always_accept"
    fast_link_updates()
