"""Sphinx configuration of the glue-mvmcut documentation (astropy style: sphinx-astropy v2)."""

import os
from pathlib import Path

from sphinx_astropy.conf.v2 import *  # noqa: F403  (the astropy project's shared settings)

import glue_mvmcut

project = "glue-mvmcut"
author = "The glue-mvmcut developers"
copyright = "2026, " + author
version = release = glue_mvmcut.__version__

exclude_patterns = ["_build"]
html_static_path = ["_static"]
html_title = f"glue-mvmcut {version}"
html_theme_options = {
    "github_url": "https://github.com/glue-viz/glue-mvmcut",
    "logo": {"text": "glue-mvmcut"},
}
numpydoc_show_class_members = False
automodapi_toctreedirnm = "api_generated"
automodsumm_inherited_members = False
# CI machines have no internet: no inventories to fetch. Build with -D disable_intersphinx=0 online.
disable_intersphinx = 1
nitpicky = False


def _write_cli_help(app):
    """Write ``mvmcut <command> --help`` into _generated/, so the CLI reference never drifts."""
    from glue_mvmcut.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width
    out = Path(app.srcdir) / "_generated"
    out.mkdir(exist_ok=True)
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    texts = {"mvmcut": parser.format_help(), **{n: p.format_help() for n, p in subparsers.choices.items()}}
    for name, text in texts.items():
        target = out / f"help_{name}.txt"
        if not target.exists() or target.read_text() != text:
            target.write_text(text)


def setup(app):
    app.connect("builder-inited", _write_cli_help)
