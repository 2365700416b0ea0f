"""Glue plugin entry point (``glue.plugins`` → ``glue_mvmcut.glue:setup``), and `load_mvm`.

`setup` registers the MVM data factory, the auto-linker for MVM files
(`~glue_mvmcut.glue.links.register_autolinker`) and, where glue-qt is installed, the menu
action. Registration imports nothing Glue does not load at start-up anyway: the dialog and the
pipeline load when a user asks for them (`load_mvm` too, on first use).
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
