"""The package's layout: dependencies point one way, private names stay in their module, and no
module grows past what one reader holds in mind."""

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import glue_mvmcut

PACKAGE = Path(glue_mvmcut.__file__).parent

#: Every module, lowest first: a module may import only modules before it (a package's
#: ``__init__`` comes after the modules it gathers). A new module takes its place here.
ORDER = [
    "core.config",
    "core.errors",
    "core.threadsafe",
    "core.coords",
    "core.skycells",
    "core.names",
    "core.footprints",
    "core.fitsheaders",
    "core.files",
    "core.fitsfile",
    "core.ecsvfile",
    "core.layers",
    "core.servers",
    "core.endpoints",
    "core.limits",
    "core.pipelining",
    "core.transport",
    "core.byteranges",
    "core.spanplan",
    "core.querycache",
    "core.mast",
    "core.download",
    "core.rangedfile",
    "core.remote",
    "core.probe",
    "core.cutout",
    "core.bands",
    "core.combiners",
    "core.combine",
    "core.pipeline",
    "core.targets",
    "core.manifest",
    "core.batch",
    "core",
    "hapcut",
    "quicklook",
    "testing.headers",
    "testing.synth",
    "testing.portal",
    "testing.faults",
    "testing.stamps",
    "testing.ranges",
    "testing.replies",
    "testing.lane",
    "testing.server",
    "testing",
    "glue.derivable",
    "glue.links",
    "glue.viewers",
    "glue.qt.viewers",
    "glue.qt.collection",
    "glue.loader",
    "glue.qt.worker",
    "glue.qt.dialog",
    "glue.qt.batch",
    "glue.qt.pick",
    "glue.qt",
    "glue",
    "cli",
    "_version",
    "",
]
LARGEST = 600  # lines


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) for every import of the package's own
    modules in ``name``, at any depth (lazy imports in functions too)."""
    parts = name.split(".") if name else []
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif (node.module or "").split(".")[0] == "glue_mvmcut":
                target = node.module.removeprefix("glue_mvmcut").lstrip(".")
            else:
                continue
            found.append((target, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "glue_mvmcut":
                    found.append((alias.name.removeprefix("glue_mvmcut").lstrip("."), [], node.lineno))
    return found


def _parse_all() -> dict[str, list]:
    return {name: _imports(name, path) for name, path in _modules().items()}


@functools.cache
def _all_imports() -> dict[str, list[tuple[str, list[str], int]]]:
    """`_imports` of every module, parsed in a fresh interpreter: CPython 3.11's ``ast.parse``
    keeps its recursion depth per interpreter, not per thread, and fails ("AST constructor
    recursion depth mismatch") when a thread another test left running parses code meanwhile."""
    result = subprocess.run(
        [sys.executable, "-c", "import json, test_layout; print(json.dumps(test_layout._parse_all()))"],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return {name: [tuple(i) for i in found] for name, found in json.loads(result.stdout).items()}


def test_every_module_has_its_place_in_the_order():
    assert sorted(_modules()) == sorted(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_modules_import_only_modules_below_them(name):
    modules = _modules()
    for target, names, line in _all_imports()[name]:
        # "from . import x" names a module x of the package, not the package itself.
        targets = [f"{target}.{n}".lstrip(".") for n in names if f"{target}.{n}".lstrip(".") in modules]
        for imported in targets or [target]:
            assert ORDER.index(imported) < ORDER.index(name), f"{name}:{line} imports {imported}, above it"


@pytest.mark.parametrize("name", ORDER)
def test_no_private_name_is_imported_from_another_module(name):
    for target, names, line in _all_imports()[name]:
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{name}:{line} imports {private} from {target}"


@pytest.mark.parametrize("name", ORDER)
def test_modules_stay_readable(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines < LARGEST, f"{name} has {lines} lines"
