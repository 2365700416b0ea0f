"""Glue plugin entry point (``glue.plugins`` → ``glue_mvmcut.glue:setup``), and `load_mvm`.

`setup` registers the MVM data factory, the auto-linker for MVM files
(`~glue_mvmcut.glue.links.register_autolinker`) and, where glue-qt is installed, the menu
action, and has the garbage collector leave alone what Glue loaded at start-up. Registration
imports nothing Glue does not load at start-up anyway: the dialog and the pipeline load when a
user asks for them (`load_mvm` too, on first use).
"""

__all__ = ["setup", "load_mvm"]


def __getattr__(name: str):
    if name == "load_mvm":
        from .loader import load_mvm

        return load_mvm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def setup():
    """Register glue-mvmcut with Glue; called once per process by ``glue.main.load_plugins``."""
    from glue.config import data_factory

    from .loader import MVM_FACTORY_LABEL, MVM_FACTORY_PRIORITY, is_mvm_fits, read_mvm

    if not any(member.label == MVM_FACTORY_LABEL for member in data_factory.members):
        data_factory(MVM_FACTORY_LABEL, identifier=is_mvm_fits, priority=MVM_FACTORY_PRIORITY)(read_mvm)
    from .links import register_autolinker

    register_autolinker()
    from .qt import register

    try:
        register()
    except ImportError:  # glue-core without glue-qt (e.g. in Jupyter): the data factory is all
        pass
    _freeze_what_glue_loaded()


def _freeze_what_glue_loaded() -> None:
    """Have Python's collector leave alone the objects that exist now (`gc.freeze`), once per
    process.

    A full collection scans every object tracked and holds the GIL meanwhile: in a Glue session
    ~300,000 of them are the modules of Glue, Matplotlib, Astropy and Qt, there before any Data,
    and each full collection froze the window 0.2-0.4 s wherever it fell (a few per load of 25
    Data). Glue loads its plugins before any Data, so what exists now lives as long as the
    process, and the collector has nothing to find in it.
    """
    import gc

    if not gc.get_freeze_count():
        gc.freeze()
