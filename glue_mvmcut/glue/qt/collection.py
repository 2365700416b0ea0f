"""Adding a load's Data to the Qt Glue application's data collection without its tree freezing
the window."""

from contextlib import contextmanager

from glue.core.message import DataCollectionAddMessage
from glue_qt.core.data_collection_model import DataCollectionView

__all__ = ["one_tree_update"]


@contextmanager
def one_tree_update(app):
    """Hold the reaction of the application's data collection tree to added Data until the end of
    the block, then let it react once, to the last Data added, as it would have last.

    Glue's tree rebuilds itself, lays out every row and selects the new Data once per Data
    added: N Data added to M cost ~N·(M + N) row layouts, 1.7 s of the GUI thread for the fifth
    load of 25 Data. Its reaction rebuilds everything and selects the last Data added, so the one
    reaction leaves the tree as the N would. Other listeners (viewers' lists of Data, subset
    groups) still hear of every Data.
    """
    hub = app.data_collection.hub
    held = []
    for view in app.findChildren(DataCollectionView):
        model = view.model()
        handler = hub.get_handler(model, DataCollectionAddMessage)
        if handler is not None:
            hub.unsubscribe(model, DataCollectionAddMessage)
            held.append((model, handler))
    count = len(app.data_collection)
    try:
        yield
    finally:
        for model, handler in held:
            hub.subscribe(model, DataCollectionAddMessage, handler)
            if len(app.data_collection) > count:
                handler(DataCollectionAddMessage(app.data_collection, app.data_collection[-1]))
