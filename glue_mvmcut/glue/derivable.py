"""What each Glue Data can derive through the links, kept up to date in time that grows with
what changed, and planned for a load off the GUI thread.

Glue's `~glue.core.link_manager.LinkManager` recomputes, at each change of Data or links, every
component each Data can derive and the Data pixel-aligned with it, in time growing with the cube
of the number of linked Data. `fast_link_updates` has it use `update_externally_derivable_components`,
which finds the same and, while links are only added (a load), goes on from the last update.
A load's share of that work is done by the worker that prepares the load: `link_state` reads the
last update's outcome on the GUI thread, `plan_links` continues it on the worker with the load's
Data and links, and the update that adds them sets what was planned if nothing changed meanwhile.
"""

import heapq
import weakref
from collections import defaultdict
from dataclasses import dataclass

__all__ = [
    "LinkIndex",
    "LinkState",
    "LinkPlan",
    "link_state",
    "plan_links",
    "expect_plan",
    "update_externally_derivable_components",
    "GLUES_OWN",
    "fast_link_updates",
]


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
    """What `update_externally_derivable_components` found last for one data collection: the
    links then, and for each Data its own components, its `LinkIndex.derivable` outcome and the
    components set on it (`_derive`); and a plan for the next update (`expect_plan`)."""

    def __init__(self):
        self.links: frozenset = frozenset()
        self.of: dict = {}  # Data -> (own components, derived, depth, components set)
        self.plan: LinkPlan | None = None


#: What the last update found, per data collection.
_FOUND: "weakref.WeakKeyDictionary[object, _Found]" = weakref.WeakKeyDictionary()


def _found_for(data_collection) -> _Found:
    found = _FOUND.get(data_collection)
    if found is None:
        found = _FOUND[data_collection] = _Found()
    return found


def _own(data) -> set:
    return set(data.main_components + data.coordinate_components)


def _derive(one, own: set, before: dict, kept: tuple | None, index: LinkIndex, added) -> tuple:
    """What ``one`` derives through the links of ``index``: (own components, derived, depth,
    components to set). Goes on from ``kept`` (what the last update found for it) if only the
    links ``added`` (their `LinkIndex.numbers`; None if links went) joined since and its own
    components and those set on it (``before``) are as then; else searches anew.

    A component derived by the same link as before keeps its `DerivedComponent` (Glue makes
    them all anew: each load re-made N² of them, 62000 at 125 Data). ``kept`` is left as it is
    (a plan made on a worker reads it).
    """
    from glue.core.component import DerivedComponent

    if added is not None and kept is not None and kept[0] == own and kept[3] is before:
        derived, depth = dict(kept[1]), dict(kept[2])
        changed = index.extend(derived, depth, added)
        if not changed:
            return kept
        components = {**before, **{cid: DerivedComponent(one, link) for cid, link in changed.items()}}
    else:
        derived, depth = index.derivable(one)
        components = {
            cid: before[cid] if cid in before and before[cid].link is link else DerivedComponent(one, link)
            for cid, link in derived.items()
        }
    return own, derived, depth, components


@dataclass(frozen=True)
class LinkState:
    """What the last link update of a data collection found, read on the GUI thread
    (`link_state`) for a worker to plan a load's links from (`plan_links`)."""

    data: list  # the collection's Data
    links: frozenset  # every component link and its inverse
    of: dict  # Data -> what `_derive` found


@dataclass(frozen=True)
class LinkPlan:
    """What every Data will derive once a load's Data and links are added (`plan_links`)."""

    based_on: dict  # the `LinkState.of` it went on from
    data: list  # the collection's Data then, in order
    links: frozenset
    of: dict

    def fits(self, found: _Found, collection: list, links: frozenset) -> bool:
        """Whether the collection is as planned and nothing was updated since the plan's
        `LinkState` was read."""
        return (
            found.of is self.based_on
            and len(collection) == len(self.data)
            and all(one is planned for one, planned in zip(collection, self.data, strict=True))
            and links == self.links
            and all(_own(one) == self.of[one][0] for one in collection)
        )


def link_state(data_collection) -> LinkState:
    """The last link update's outcome for ``data_collection`` (call it on the GUI thread)."""
    from glue.core.data import BaseCartesianData

    found = _found_for(data_collection)
    return LinkState([d for d in data_collection if isinstance(d, BaseCartesianData)], found.links, found.of)


def plan_links(state: LinkState, new_data: list, new_links: list) -> "LinkPlan | None":
    """What every Data will derive once ``new_data`` and ``new_links`` join the collection whose
    `link_state` is ``state``: the update's work but setting it, for a worker. None if the last
    update did not see every Data (there is then nothing to go on from)."""
    from glue.core.data import BaseCartesianData
    from glue.core.link_helpers import LinkCollection

    if any(one not in state.of for one in state.data):
        return None
    added = {link for data in new_data for link in data.links}
    for link in new_links:
        added.update(link if isinstance(link, LinkCollection) else [link])
    added |= {link.inverse for link in added if link.inverse is not None}
    links = state.links | added
    index = LinkIndex(links)
    numbers = index.numbers(links - state.links)
    of = {}
    for one in state.data:
        own, _, _, before = kept = state.of[one]
        of[one] = _derive(one, own, before, kept, index, numbers)
    new = [d for d in new_data if isinstance(d, BaseCartesianData)]
    for one in new:
        of[one] = _derive(one, _own(one), {}, None, index, numbers)
    return LinkPlan(state.of, state.data + new, links, of)


def expect_plan(data_collection, plan: "LinkPlan | None") -> None:
    """Have the next link update of ``data_collection`` set what ``plan`` found, if it fits."""
    _found_for(data_collection).plan = plan


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
    (`_derive`), or what a worker planned for this update is set (`expect_plan`); and only Data
    sharing a pixel component can be pixel-aligned unless identity links join them
    (`_pixel_alignments`).
    """
    from glue.core.data import BaseCartesianData

    if self.data_collection is None:
        if data is None:
            return
        collection, found = [data], _Found()
    else:
        collection, found = self.data_collection, _found_for(self.data_collection)
    collection = [d for d in collection if isinstance(d, BaseCartesianData)]
    links = frozenset(self._links | self._inverse_links)
    plan, found.plan = found.plan, None
    if plan is not None and plan.fits(found, collection, links):
        of = dict(plan.of)
    else:
        index = LinkIndex(links)
        added = index.numbers(links - found.links) if found.links <= links else None  # None: links went
        of = {}
        for one in collection:
            before = one._externally_derivable_components
            of[one] = _derive(one, _own(one), before, found.of.get(one), index, added)
    for one in collection:
        own, derived, depth, components = of[one]
        if components is not one._externally_derivable_components:
            one._set_externally_derivable_components(components)  # kept as it was if unchanged
            of[one] = (own, derived, depth, one._externally_derivable_components)
    found.links, found.of = links, of
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
