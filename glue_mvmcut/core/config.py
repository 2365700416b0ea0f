"""Configuration items, read from ``glue_mvmcut.cfg`` in the astropy configuration directory."""

from astropy import config as _config

__all__ = ["Conf", "conf"]


class Conf(_config.ConfigNamespace):
    """Configuration of glue-mvmcut.

    Items live at the top of ``glue_mvmcut.cfg``; change them for one block of code with
    ``conf.set_temp(name, value)``. The MAST server itself is astroquery's ``[mast] server``
    item, so one setting points astroquery and glue-mvmcut at the same archive.
    """

    timeout = _config.ConfigItem(
        30.0,
        "Seconds to wait for the archive to accept a connection or to send the next bytes.",
        module="glue_mvmcut",
    )
    min_rate = _config.ConfigItem(
        20.0,
        "Slowest transfer accepted, in kB/s: a request may take conf.timeout seconds plus one "
        "second per min_rate kB it brings, and is stopped beyond that (a server trickling bytes "
        "never holds a run for ever).",
        module="glue_mvmcut",
    )
    retries = _config.ConfigItem(
        4,
        "How many times a request that failed with HTTP 5xx or a broken connection is tried again "
        "(with exponential backoff); broken downloads resume where they stopped, and count only "
        "the attempts in a row that brought nothing.",
        module="glue_mvmcut",
    )
    connections = _config.ConfigItem(
        8,
        "Connections kept alive to one server, and so requests to it in flight at once (read when "
        "the first ranged read of the process starts).",
        module="glue_mvmcut",
    )
    overfetch = _config.ConfigItem(
        0.0,
        "From a server that answers one range per request, rows closer than a request is worth "
        "(a round trip's share of the throughput, both measured) are fetched together. 0 (the "
        "default): wherever that is cheaper; N: moving at most N times the bytes a cutout needs "
        "(fewest first), for metered links, at the cost of many more requests.",
        module="glue_mvmcut",
    )
    block_mb = _config.ConfigItem(
        32.0,
        "MB of one array's rows handled at a time: cutouts and mosaics larger than this per "
        "array are written into their files a block of rows at a time, never whole in memory.",
        module="glue_mvmcut",
    )
    backoff = _config.ConfigItem(
        0.5,
        "Seconds before the second retry; each further retry waits twice as long.",
        module="glue_mvmcut",
    )
    query_timeout = _config.ConfigItem(
        300.0,
        "Seconds a MAST query may take in all (its requests, and polling while MAST answers "
        "EXECUTING) before giving up.",
        module="glue_mvmcut",
    )
    query_lifetime = _config.ConfigItem(
        24.0,
        "Hours MAST's list of a skycell's layers, kept on disk in the download cache's queries "
        "folder, is used instead of asking MAST again; 0 asks every time. mvmcut --refresh (or "
        "refresh=True) asks anew once.",
        module="glue_mvmcut",
    )
    resolver = _config.ConfigItem(
        "",
        "URL of the name resolver (MAST's SANTA protocol). Empty means MAST's own resolver when the "
        "[mast] server is MAST, and <server>/Santa-war/query for any other server (a mirror or the "
        "stand-in of glue_mvmcut.testing).",
        module="glue_mvmcut",
    )
    cache_dir = _config.ConfigItem(
        "",
        "Directory for whole-file downloads. Empty means <astropy cache dir>/glue_mvmcut; "
        "the environment variable MVMCUT_CACHE_DIR overrides both.",
        module="glue_mvmcut",
    )
    cache_limit = _config.ConfigItem(
        50.0,
        "Most GB the download cache may hold: after a download, the least recently used files go "
        "until it fits (the file just downloaded stays, even if larger).",
        module="glue_mvmcut",
    )


conf = Conf()
