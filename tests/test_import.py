"""``import glue_mvmcut`` is light and side-effect free."""

import json
import os
import subprocess
import sys

PROBE = """
import json, logging, sys
import glue_mvmcut
print(json.dumps({
    "heavy": sorted(m for m in sys.modules
                    if m.split(".")[0] in ("glue", "glue_qt", "PySide6", "qtpy", "tqdm", "matplotlib")),
    "third_party": sorted({m.split(".")[0] for m in sys.modules} & {"astropy", "numpy", "astroquery"}),
    "log": glue_mvmcut.log.name,
    "root_handlers": len(logging.getLogger().handlers),
    "package_handlers": [
        f"{type(h).__module__}.{type(h).__name__}" for h in logging.getLogger("glue_mvmcut").handlers
    ],
    "version": glue_mvmcut.__version__,
}))
"""


def _run_in_empty_home(tmp_path, code):
    """(result, every path written under a fresh home and working folder) of ``code``."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(parents=True)
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("XDG_")}
    env["HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    return result, sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p not in (home, work))


def test_import_loads_no_gui_and_writes_nothing(tmp_path):
    # astropy before 8.0 creates ~/.astropy/config when imported: that much is astropy's own.
    _, astropys_own = _run_in_empty_home(tmp_path / "astropy", "import astropy")
    result, written = _run_in_empty_home(tmp_path / "ours", PROBE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    # Nothing but the standard library until a name is used (`mvmcut` takes Ctrl-C from then on).
    assert report["third_party"] == []
    assert report["log"] == "glue_mvmcut"
    # Its own logger prints through astropy's handler, as astroquery's does; nothing else is set.
    assert report["root_handlers"] == 0 and report["package_handlers"] == ["astropy.logger.StreamHandler"]
    assert report["version"]
    assert written == astropys_own
    assert result.stderr == ""


def test_heavy_modules_wait_until_they_are_used():
    """The command line and the pipeline import reproject (with dask) only to resample, and the
    command line's help needs neither astropy's coordinates nor its tables."""
    probe = (
        "import sys\n"
        "import glue_mvmcut.cli\n"
        "help_needs = sorted(m for m in ('astropy.coordinates', 'astropy.table') if m in sys.modules)\n"
        "import glue_mvmcut.core.pipeline\n"
        "print(help_needs, sorted(m for m in ('reproject', 'dask') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] []"


def test_the_package_exports_every_error_of_the_core_lazily():
    """The root lists the errors by name (importing them would import astropy): the list and the
    errors module never drift apart."""
    import glue_mvmcut
    from glue_mvmcut.core import errors

    assert set(errors.__all__) <= set(glue_mvmcut.__all__)
    assert all(getattr(glue_mvmcut, name) is getattr(errors, name) for name in errors.__all__)
    assert sorted(dir(glue_mvmcut)) == sorted(glue_mvmcut.__all__)
