"""The GUI-free core of glue-mvmcut: geometry, names, archive access, cutting and combining.

Importing the core gives the ``glue_mvmcut`` logger its handler (astropy's, as astroquery's
logger has) and astropy's ``log_level``, unless it already has a handler: every module that
logs imports the core first, and the package root stays free of astropy.
"""

import logging

from astropy.logger import StreamHandler
from astropy.logger import conf as _astropy_log_conf


def _with_origin(record: logging.LogRecord) -> bool:
    # astropy's handler names where a message comes from with ``origin``, which only its own
    # logger class sets: here, the module's logger name.
    record.origin = getattr(record, "origin", record.name)
    return True


def _init_log() -> logging.Logger:
    """The package's logger, printing through astropy's handler; its modules' loggers
    (``glue_mvmcut.core.mast``, ...) pass their records to it."""
    logger = logging.getLogger("glue_mvmcut")
    if not logger.handlers:
        handler = StreamHandler()
        handler.addFilter(_with_origin)
        logger.addHandler(handler)
        logger.setLevel(_astropy_log_conf.log_level)
    return logger


log = _init_log()
