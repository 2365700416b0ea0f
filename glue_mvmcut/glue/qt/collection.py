"""The Qt Glue application's data collection tree, reacting to what is added without freezing
the window."""

from glue.core.message import DataCollectionAddMessage, SubsetCreateMessage
from glue_qt.core.data_collection_model import DataCollectionModel, DataCollectionView
from qtpy import QtWidgets
from qtpy.shiboken import isValid  # PySide6's

__all__ = ["tree_reacts_once_per_turn"]

#: glue-qt's reactions of the tree to a Data and to a subset added, by message, and how many
#: Data or subset groups there are (each reaction selects the last one: none left, no reaction).
_REACTIONS = {
    DataCollectionAddMessage: ("_on_add_data", len),
    SubsetCreateMessage: ("_on_add_subset", lambda collection: len(collection.subset_groups)),
}


def _react_later(react, count):
    """``react(model, message)`` made to run once, in a turn of its own, however many messages
    come before: with the last message, after the reactions to other kinds whose last message
    came before it, if ``count(data collection)`` is not 0 then."""

    def later(model, message):
        pending = model.__dict__.setdefault("_mvmcut_pending", {})
        if not pending:
            from .viewers import pace_draws  # (the pacer's queue: one piece of GUI work per turn)

            pace_draws().later(lambda: _react_now(model))
        pending.pop(react, None)  # to the end: reactions run in the order of their last message
        pending[react] = (message, count)

    later.reacts_once_per_turn = True
    return later


def _react_now(model) -> None:
    pending = model.__dict__.pop("_mvmcut_pending", {})
    if not any(  # the application may have closed meanwhile: its tree is gone
        isinstance(widget, DataCollectionView) and isValid(widget) and widget.model() is model
        for widget in QtWidgets.QApplication.allWidgets()
    ):
        return
    for react, (message, count) in pending.items():
        if count(model.data_collection):
            react(model, message)


def tree_reacts_once_per_turn(app=None) -> None:
    """Have glue-qt's data collection trees react once per turn of the event loop to the Data and
    subsets added in it (idempotent), those of ``app`` made before this too.

    The tree rebuilds itself, lays out every row and selects what was added once per Data and
    once per subset: a load of N Data added to M cost ~N·(M + N) row layouts (1.7 s of the GUI
    thread at the fifth load of 25), and a subset drawn on an image makes one subset per Data
    (12-15 s with 125 Data, most of it computing each row's icon anew). Each reaction rebuilds
    everything and selects the last thing added, so the last reaction alone leaves the tree as
    all of them would. Other listeners (viewers' lists of Data, subset groups) still hear of
    every Data and subset at once.
    """
    for name, count in _REACTIONS.values():
        react = getattr(DataCollectionModel, name)
        if not getattr(react, "reacts_once_per_turn", False):
            setattr(DataCollectionModel, name, _react_later(react, count))
    for view in app.findChildren(DataCollectionView) if app is not None else ():
        model = view.model()
        for message, (name, _) in _REACTIONS.items():  # (subscribed before: the old reactions)
            model.data_collection.hub.subscribe(model, message, getattr(model, name))
