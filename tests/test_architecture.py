"""The package's shape: layers that import only downwards, no import cycle, Google Cloud loaded
only for gs:// paths, short modules, nothing at the top of lib/deepseg but subpackages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import numpy as np
import pytest

from conftest import REPO, lattice_transform, write_experiment, write_model, write_raster

PACKAGE = REPO / "lib" / "deepseg"
MAX_LINES = 300
GOOGLE = ("google.cloud", "google.api_core", "google.auth")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """import-linter with pyproject.toml's contract, on the ``deepseg`` under ``package_parent``."""
    lint = shutil.which("lint-imports", path=Path(sys.executable).parent)
    assert lint, "lint-imports is missing: pip install -e '.[dev]'"
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [lint, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )


def test_layers_import_only_downwards() -> None:
    result = lint_imports(REPO / "lib")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is real: geo importing the merge stage is reported, by module."""
    copy = tmp_path / "deepseg"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    grid = copy / "geo" / "grid.py"
    grid.write_text(grid.read_text() + "\nfrom ..stages import merge  # noqa: E402, F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "deepseg.geo.grid -> deepseg.stages.merge" in result.stdout


def find_cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among the package's modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return path[path.index(imported) :] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle_even_through_lazy_imports() -> None:
    graph = grimp.build_graph("deepseg", exclude_type_checking_imports=True)
    assert len(graph.modules) > 60
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    assert find_cycle(graph) is None
    graph.add_import(importer="p.c", imported="p.a")
    assert find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]


def test_predict_does_not_load_the_google_cloud_client() -> None:
    code = (
        "import sys, deepseg.stages.predict, deepseg.cli.commands, deepseg.qa.check; "
        f"print([m for m in sys.modules if m.startswith({GOOGLE!r})])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


BLOCK_GOOGLE = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class NoGoogle(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith({GOOGLE!r}):
                raise ImportError(f"{{name}} is not installed (blocked by the test)")

    sys.meta_path.insert(0, NoGoogle())
    """
)


def test_a_local_run_works_without_google_cloud_installed(tmp_path: Path) -> None:
    """Every stage of a local run, in one process that cannot import the Google client."""
    data = np.random.default_rng(3).integers(1, 255, size=(3, 150, 140), dtype=np.uint8)
    raster = write_raster(tmp_path / "scene.tif", data, lattice_transform(640 + 5, 640 + 7))
    exp = write_experiment(tmp_path, [raster], write_model(tmp_path / "model"))
    commands = [[c, "-e", str(exp)] for c in ("tiles", "predict", "merge", "vectorize")]
    code = BLOCK_GOOGLE + textwrap.dedent(
        f"""
        from deepseg.cli.commands import main
        for argv in {commands!r}:
            main(argv)
        try:
            import google.cloud.storage
        except ImportError as exc:
            print("blocked:", exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "blocked: google.cloud" in result.stdout
    out = tmp_path / "out"
    assert (out / "merged" / "all_prob.tif").is_file()
    assert (out / "vectors" / "rts_predictions.gpkg").is_file()


def test_a_gs_path_without_google_cloud_says_what_is_missing(tmp_path: Path) -> None:
    """The lazy import is taken only for gs:// paths, and then it is needed."""
    exp = tmp_path / "gs.yaml"
    exp.write_text(
        "input: {rasters: ['gs://some-bucket/x.tif']}\nmodel: {dir: 'gs://some-bucket/m'}\n"
    )
    code = BLOCK_GOOGLE + f"import deepseg.config as c; c.load_experiment({str(exp)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert ": gs:// paths need the Google Cloud client (google." in last
    assert last.endswith("pip install google-cloud-storage")


@pytest.mark.parametrize(
    "module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_modules_stay_short(module: Path) -> None:
    lines = len(module.read_text().splitlines())
    assert lines <= MAX_LINES, f"{module.relative_to(REPO)}: {lines} lines (keep under ~300)"


def test_the_package_top_holds_only_subpackages() -> None:
    files = sorted(p.name for p in PACKAGE.iterdir() if p.is_file())
    assert files == ["__init__.py"]
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert layers == {
        "cli", "synthetic", "training", "qa", "stages", "run", "model", "stores", "geo", "config",
        "storage", "formats", "core",
    }  # fmt: skip


def test_the_tests_follow_the_package() -> None:
    """Each test folder is named after a layer, and the tests of a layer live in it."""
    tests = REPO / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders and folders <= layers, sorted(folders - layers)
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), "two test files share a name (pytest imports by name)"
