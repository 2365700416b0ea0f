"""Regenerate the screenshots in ``docs/_static`` from the real Glue window, offscreen.

    python docs/make_screenshots.py

Runs the test that drives the dialog (search, untick a filter, cut and load, draw a selection
in one viewer) against the stand-in MAST, with its screenshots saved here instead of in a
scratch folder: the test suite itself never writes into the repository. Look at them before
committing.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = {
        **os.environ,
        "MVMCUT_SCREENSHOTS": str(ROOT / "docs" / "_static"),
        "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
    }
    test = "tests/test_glue_qt.py::test_search_then_cut_and_load"
    return subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", test], env=env, cwd=ROOT
    )


if __name__ == "__main__":
    sys.exit(main())
