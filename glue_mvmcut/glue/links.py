"""Links between Glue Data by WCS that stay cheap however much is loaded.

- `wcs_links` links new Data to each other and to what is already loaded, so a subset drawn on
  one image selects the same sky in all: exactly and cheaply (`TangentPlaneLink`, an affine map)
  between images on one projection cell's tangent plane, by Glue's `WCSLink` otherwise; a star,
  and to one Data per group already linked (`link_roots`), so each load adds as many links as
  it brings Data.
- `mvm_autolink` is Glue's auto-linker for MVM files opened from File → Open or the ``glue``
  command: they are linked as the dialog links them, at once, and `register_autolinker` keeps
  Glue's WCS auto-linker (and its pop-up) away from them.
- `fast_link_updates` replaces Glue's update of what each Data can derive through the links,
  whose cost grows with the cube of the number of linked Data, by an equivalent one that grows
  with the number of Data times links, and, while links are only added, with what they bring.
"""

import heapq
import logging
from collections import defaultdict

import numpy as np
from astropy.wcs import WCS
from glue.core.link_helpers import MultiLink

__all__ = [
    "TangentPlaneLink",
    "tangent_plane_link",
    "wcs_links",
    "link_roots",
    "LinkIndex",
    "update_externally_derivable_components",
    "GLUES_OWN",
    "fast_link_updates",
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


class LinkIndex:
    """Links indexed by the components they take: what one Data can derive through them is then
    found without looking at the links it cannot use (`derivable`).

    Parameters
    ----------
    links : iterable of Glue links
    """

    def __init__(self, links):
        self._links = list(links)
        self._targets = [link.get_to_id() for link in self._links]
        # link -> the different components it takes
        self._inputs = [set(link.get_from_ids()) for link in self._links]
        self._users = defaultdict(list)  # component -> the links that take it
        for number, inputs in enumerate(self._inputs):
            for cid in inputs:
                self._users[cid].append(number)

    def derivable(self, data) -> tuple[dict, dict]:
        """What `glue.core.link_manager.discover_links` finds: for each component ``data`` can
        derive, the link that derives it in the fewest steps; and the steps to each component
        it has (0) or derives (for `extend`).

        Glue's own rescans every link after each component it finds (its code says so in a TODO):
        with N linked Data, ~N² link checks per Data and ~N³ per update, 25 s for the fifth load
        of 25 Data. Here, a shortest-path search over the components: a link is ready once all it
        takes is found, and costs one step more than the deepest of its inputs. Among equally
        short ways to derive a component, either may be chosen, as in Glue's.
        """
        own = set(data.main_components + data.coordinate_components)
        depth = dict.fromkeys(own, 0)
        missing = {}  # link -> what it takes that is not found yet, for links reached
        ready = [(1, number) for number, inputs in enumerate(self._inputs) if not inputs]
        for cid in own:
            ready += self._reached(cid, missing, 1)
        heapq.heapify(ready)  # (cost, link): ties go to the link listed first
        derived = {}
        while ready:
            cost, number = heapq.heappop(ready)
            target = self._targets[number]
            if target in depth:  # found already, by a way at least as short
                continue
            depth[target] = cost
            derived[target] = self._links[number]
            for ready_link in self._reached(target, missing, cost + 1):
                heapq.heappush(ready, ready_link)
        return derived, depth

    def _reached(self, cid, missing, cost):
        """The links ``cid``, once found, makes ready: (cost, link). Found in order of cost, a
        link's last input is its deepest."""
        ready = []
        for number in self._users.get(cid, ()):
            missing[number] = missing.get(number, len(self._inputs[number])) - 1
            if not missing[number]:
                ready.append((cost, number))
        return ready

    def numbers(self, links) -> list[int]:
        """Where ``links`` (all in this index) are in it, for `extend`."""
        number = {id(link): n for n, link in enumerate(self._links)}
        return [number[id(link)] for link in links]

    def extend(self, derived: dict, depth: dict, added: list[int]) -> dict:
        """`derivable` of a Data once the links ``added`` (their `numbers`) joined those it was
        found with, continued from what was found then (``derived`` and ``depth``, updated in
        place): a component found anew, or by fewer steps, may make links ready or cheaper
        in turn. Returns the components whose link changed, with their new link.

        Links only added, ways only get shorter: the search need not start over, and a load
        costs each Data already linked the components the load brings, not all it derives.
        """
        ready = []
        for number in added:
            inputs = self._inputs[number]
            if all(cid in depth for cid in inputs):
                heapq.heappush(ready, (1 + max((depth[cid] for cid in inputs), default=0), number))
        changed = {}
        while ready:
            cost, number = heapq.heappop(ready)
            target = self._targets[number]
            if depth.get(target, cost + 1) <= cost:  # found already, by a way at least as short
                continue
            depth[target] = cost
            derived[target] = changed[target] = self._links[number]
            for user in self._users.get(target, ()):
                # Through ``target`` a link costs at least cost + 1: no shorter than a way found.
                if depth.get(self._targets[user], cost + 2) > cost + 1:
                    inputs = self._inputs[user]
                    if all(cid in depth for cid in inputs):
                        heapq.heappush(ready, (1 + max(depth[cid] for cid in inputs), user))
        return changed


class _Found:
    """What `update_externally_derivable_components` found last for one link manager: the
    links then, and for each Data its own components, its `LinkIndex.derivable` outcome and the
    components set on it. The next update, if links were only added, extends each Data's search
    (`LinkIndex.extend`) rather than starting over."""

    def __init__(self):
        self.links: frozenset = frozenset()
        self.of: dict = {}  # Data -> (own components, derived, depth, components set)


def _traced(data, own, cid):
    """What ``cid`` is in ``data`` through identity links: one of ``own`` (its own components), or
    None (as `glue.core.link_manager._find_identical_reference_cid`)."""
    while cid not in own:
        link = data._get_external_link(cid)
        if link is None or not link.identity:
            return None
        cid = link.get_from_ids()[0]
    return cid


def _pixel_order(reference, target, own):
    """What `glue.core.link_manager.equivalent_pixel_cids` tells: the order of ``reference``'s
    pixel components that ``target``'s are identical to, or None (``own``: ``reference``'s own
    components)."""
    if target.ndim > reference.ndim:
        return None
    if target is reference:
        return list(range(reference.ndim))
    pixels = reference.pixel_component_ids
    order = []
    for cid in target.pixel_component_ids:
        traced = _traced(reference, own, cid)  # a pixel component of ``reference`` traces to itself
        index = next((i for i, pixel in enumerate(pixels) if pixel is traced), None)
        if index is None:
            return None
        order.append(index)
    return order


def update_externally_derivable_components(self, data=None):
    """What Glue's `glue.core.link_manager.LinkManager.update_externally_derivable_components`
    does — each Data's components derivable through the links, and the Data pixel-aligned with
    it — in time that grows with what changed, not with the cube of the Data.

    Glue's gathers every link twice per Data and scans them for each component found
    (`LinkIndex.derivable`), makes every derived component anew, and for each of the N² pairs
    of Data reads each Data's list of components four times over. Here, where links were only
    added since the last update (a load), each Data's search goes on from where it ended
    (`LinkIndex.extend`), a component derived by the same link as before keeps its
    `DerivedComponent`, and only Data sharing a pixel component can be pixel-aligned unless
    identity links join them (`_pixel_alignments`).
    """
    from glue.core.component import DerivedComponent
    from glue.core.data import BaseCartesianData

    if self.data_collection is None:
        if data is None:
            return
        collection = [data]
    else:
        collection = self.data_collection
    collection = [d for d in collection if isinstance(d, BaseCartesianData)]
    links = self._links | self._inverse_links
    index = LinkIndex(links)
    found = self.__dict__.setdefault("_mvmcut_found", _Found())
    added = index.numbers(links - found.links) if found.links <= links else None  # None: links went
    was, found.links, found.of = found.of, frozenset(links), {}
    for one in collection:
        own = set(one.main_components + one.coordinate_components)
        before = one._externally_derivable_components
        kept = was.get(one)
        if added is not None and kept is not None and kept[0] == own and kept[3] is before:
            _, derived, depth, _ = kept
            changed = index.extend(derived, depth, added)
            if not changed:
                found.of[one] = kept
                continue
            components = {**before, **{cid: DerivedComponent(one, link) for cid, link in changed.items()}}
        else:
            derived, depth = index.derivable(one)
            # A component derived by the same link as before keeps its DerivedComponent (Glue
            # makes them all anew: each load re-made N² of them, 62000 at 125 Data).
            components = {
                cid: before[cid]
                if cid in before and before[cid].link is link
                else DerivedComponent(one, link)
                for cid, link in derived.items()
            }
        one._set_externally_derivable_components(components)  # (kept as it was if unchanged)
        found.of[one] = (own, derived, depth, one._externally_derivable_components)
    for target, aligned in _pixel_alignments(collection, links).items():
        target._set_pixel_aligned_data(aligned)


def _pixel_alignments(collection: list, links) -> dict:
    """For each Data, the Data pixel-aligned with it and the order of their pixel components
    (`_pixel_order`). Without identity links, a Data can only be aligned with Data whose own
    components include its pixel components (as Glue's `equivalent_pixel_cids` finds): only
    those are tried."""
    own = {d: set(d.main_components + d.coordinate_components + d.derived_components) for d in collection}
    identity = any(link.identity for link in links)
    owners = defaultdict(list)  # component -> the Data it is one of
    for reference in () if identity else collection:
        for cid in own[reference]:
            owners[cid].append(reference)
    alignments = {}
    for target in collection:
        pixels = target.pixel_component_ids
        aligned = alignments[target] = {}
        for reference in owners[pixels[0]] if pixels and not identity else collection:
            order = _pixel_order(reference, target, own[reference]) if reference is not target else None
            if order is not None:
                aligned[reference] = order
    return alignments


#: Glue's own methods that `fast_link_updates` replaced, by name.
GLUES_OWN: dict = {}


def fast_link_updates() -> None:
    """Make Glue's link manager use `update_externally_derivable_components` (once per process;
    idempotent)."""
    from glue.core.link_manager import LinkManager

    name = update_externally_derivable_components.__name__
    GLUES_OWN.setdefault(name, getattr(LinkManager, name))
    setattr(LinkManager, name, update_externally_derivable_components)


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
