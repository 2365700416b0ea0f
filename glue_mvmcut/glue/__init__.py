"""Glue plugin entry point (``glue.plugins`` → ``glue_mvmcut.glue:setup``).

`setup` registers the MVM data factory. Registration imports no Qt and nothing heavy: the
pipeline is imported only when a user asks for cutouts.
"""


def setup():
    """Register glue-mvmcut with Glue; called once per process by ``glue.main.load_plugins``."""
    from glue.config import data_factory

    from .loader import MVM_FACTORY_LABEL, MVM_FACTORY_PRIORITY, is_mvm_fits, read_mvm

    if not any(member.label == MVM_FACTORY_LABEL for member in data_factory.members):
        data_factory(MVM_FACTORY_LABEL, identifier=is_mvm_fits, priority=MVM_FACTORY_PRIORITY)(read_mvm)
