"""Glue plugin entry point (``glue.plugins`` → ``glue_mvmcut.glue:setup``)."""


def setup():
    """Register glue-mvmcut with Glue.

    Called once per process by ``glue.main.load_plugins``. It registers nothing yet: the menu
    action, data loader and viewer tool arrive with the Glue plugin work.
    """
