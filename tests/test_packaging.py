"""The published wheel is the library alone: dstar_flwr/ and what it imports.

The experiment app (clients/, simulations/, examples/) and its dependencies
(torch, scikit-learn, ...) stay in the repository, as pyproject.toml's
dependency groups; a Flower user who installs dstar-flwr gets flwr, numpy and
numba. The wheel is built with hatchling's build API in this environment
(no build isolation, no network).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.util import find_spec
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "dstar_flwr"
LIBRARY_DEPENDENCIES = {"flwr", "numpy", "numba"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built by hatchling (the project's build backend)."""
    if find_spec("hatchling") is None:
        pytest.skip(
            "hatchling (the build backend) is not installed: install the dev group "
            "(bash scripts/setup.sh, or pip install --group dev)"
        )
    out = tmp_path_factory.mktemp("wheel")
    build = "import sys, hatchling.build as b; print(b.build_wheel(sys.argv[1]))"
    completed = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return out / completed.stdout.strip().splitlines()[-1]


def _metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(metadata_name).decode())
    return names, {key: message.get_all(key) or [] for key in ("Requires-Dist", "Name")}


def test_the_wheel_holds_only_the_library(wheel: Path) -> None:
    names, metadata = _metadata(wheel)
    assert metadata["Name"] == ["dstar-flwr"]
    top_level = {name.split("/")[0] for name in names}
    (dist_info,) = [t for t in top_level if t.endswith(".dist-info")]
    assert top_level == {LIBRARY, dist_info}, sorted(top_level)
    assert f"{LIBRARY}/__init__.py" in names
    # Everything in the package is in the wheel (hatchling skips only ignored files).
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / LIBRARY).rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".nbi", ".nbc"))]


def test_the_wheel_requires_only_flwr_numpy_and_numba(wheel: Path) -> None:
    _, metadata = _metadata(wheel)
    requirements = [Requirement(text) for text in metadata["Requires-Dist"]]
    unconditional = {
        r.name.lower() for r in requirements if r.marker is None or "extra" not in str(r.marker)
    }
    assert unconditional == LIBRARY_DEPENDENCIES, metadata["Requires-Dist"]
    # flwr without its simulation extra (Ray): a library user chooses the runtime.
    (flwr,) = [r for r in requirements if r.name == "flwr"]
    assert not flwr.extras, flwr


# Optional imports: the module that needs them is imported only when a user asks for it.
OPTIONAL_IMPORTS = {f"{LIBRARY}/torch_aggregation.py": {"torch"}}


def test_the_library_imports_nothing_beyond_its_dependencies() -> None:
    """Every import in dstar_flwr/ is the standard library, itself, or a declared dependency
    (torch only in the module of the optional torch path)."""
    allowed = LIBRARY_DEPENDENCIES | {LIBRARY} | set(sys.stdlib_module_names)
    for path in sorted((ROOT / LIBRARY).rglob("*.py")):
        allowed_here = allowed | OPTIONAL_IMPORTS.get(path.relative_to(ROOT).as_posix(), set())
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            outside = {m.split(".")[0] for m in modules} - allowed_here
            assert not outside, f"{path.relative_to(ROOT)}:{node.lineno} imports {outside}"


def test_importing_the_library_and_its_strategy_does_not_import_torch() -> None:
    code = (
        "import sys, dstar_flwr, dstar_flwr.strategy, dstar_flwr.legacy\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False", result.stdout + result.stderr
