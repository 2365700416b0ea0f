"""Where MAST is: the server astroquery is configured to use, and the addresses of its services.

The server is astroquery's own ``[mast] server`` configuration item (in `astroquery_config_file`,
or ``astroquery.mast.conf.set_temp``), read at every call, so one setting points every request
this package makes — queries, name resolution and downloads — at MAST or at a stand-in.
"""

from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from astropy.config import get_config_dir
from astroquery.mast import conf as mast_conf

from .config import conf

__all__ = [
    "MAST_SERVER",
    "MAST_RESOLVER_URL",
    "RESOLVER_PATH",
    "PORTAL_PATHS",
    "server_url",
    "astroquery_config_file",
    "using_server",
    "file_url",
    "resolver_url",
]

#: The public MAST server and its name resolver.
MAST_SERVER = "https://mast.stsci.edu"
MAST_RESOLVER_URL = "https://mastresolver.stsci.edu/Santa-war/query"
#: Where a mirror or stand-in of MAST answers name resolution.
RESOLVER_PATH = "/Santa-war/query"
#: astroquery's portal URL attributes and the path of each on a MAST server.
PORTAL_PATHS = {
    "MAST_REQUEST_URL": "/api/v0/invoke",
    "COLUMNS_CONFIG_URL": "/portal/Mashup/Mashup.asmx/columnsconfig",
    "MAST_DOWNLOAD_URL": "/api/v0.1/Download/file",
    "MAST_BUNDLE_URL": "/api/v0.1/Download/bundle",
}


def server_url() -> str:
    """The MAST server astroquery is configured to use now (``[mast] server``), without a trailing /."""
    return str(mast_conf.server).rstrip("/")


def astroquery_config_file() -> Path:
    """Where astroquery reads its settings (``[mast] server`` among them): ``astroquery.cfg`` in
    astropy's configuration directory (``~/.config/astropy``; ``$XDG_CONFIG_HOME/astropy`` where
    that variable names a directory; ``~/.astropy/config`` where an older astropy made it)."""
    return Path(get_config_dir("astropy")) / "astroquery.cfg"


@contextmanager
def using_server(url: str):
    """Point astroquery, and so glue-mvmcut, at ``url`` for the duration of a ``with`` block."""
    with mast_conf.set_temp("server", url):
        yield


def file_url(data_uri: str) -> str:
    """Download URL of a product ``dataURI`` (``mast:HST/product/<file>``) on the current server."""
    return f"{server_url()}{PORTAL_PATHS['MAST_DOWNLOAD_URL']}?uri={quote(data_uri, safe=':/')}"


def resolver_url() -> str:
    """URL of the name resolver in force now (``glue_mvmcut.conf.resolver``, see there)."""
    if conf.resolver:
        return str(conf.resolver)
    server = server_url()
    return MAST_RESOLVER_URL if server == MAST_SERVER else server + RESOLVER_PATH
