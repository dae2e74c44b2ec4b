"""The layers of docs/architecture.md only point down, and no modules import each other in a loop.

The layers are written once, in pyproject.toml's ``[tool.importlinter]`` (import-linter's layers contract; grimp
counts imports inside functions too). grimp finds a package's modules by walking its folder, and the installed
package maps ``asa_plugin.attacks`` / ``asa_plugin.adapters`` to the top-level attacks/ and adapters/ folders
(pyproject ``package-dir``), so each check runs on a copy of the package laid out as it installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"

CYCLES = """
import sys
import grimp

graph = grimp.build_graph("asa_plugin", cache_dir=None)
modules = sorted(graph.modules)
print(len(modules), "modules")
# a module's own package (its __init__) is no dependency worth a cycle, as in ../shared/tools/structure.py
deps = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d != m and not m.startswith(d + "."))
        for m in modules}
index, low, stack, on, sets = {}, {}, [], set(), []
sys.setrecursionlimit(10_000)

def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in deps[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        members = []
        while True:
            w = stack.pop()
            on.discard(w)
            members.append(w)
            if w == v:
                break
        if len(members) > 1:
            sets.append(sorted(members))

for m in modules:
    if m not in index:
        visit(m)
for members in sets:
    print("cycle:", " ".join(members))
"""


def installed_layout(dest: Path) -> Path:
    """A copy of the package as it installs (attacks/ and adapters/ inside asa_plugin/) beside pyproject.toml."""
    def skip(folder: str, names: list[str]) -> list[str]:  # a worktree links asa_plugin/attacks -> ../attacks
        top = Path(folder) == ROOT / "asa_plugin"
        return [n for n in names if n == "__pycache__" or top and n in ("attacks", "adapters")]

    shutil.copytree(ROOT / "asa_plugin", dest / "asa_plugin", ignore=skip)
    for name in ("attacks", "adapters"):
        shutil.copytree(ROOT / name, dest / "asa_plugin" / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def run_in(tree: Path, *args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``tree``, where ``asa_plugin`` is the copy (ahead of the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def lint(tree: Path) -> subprocess.CompletedProcess:
    return run_in(tree, "-c", LINT, "--no-cache", "--no-logo")  # the contracts: pyproject.toml in tree


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return installed_layout(tmp_path_factory.mktemp("layout"))


def test_the_layers_only_point_down(package):
    result = lint(package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_check_sees_the_attacks_and_adapters_packages(package):
    """The check reads the whole installed package, not only the asa_plugin/ folder."""
    code = "import grimp; print(*sorted(grimp.build_graph('asa_plugin', cache_dir=None).modules))"
    listed = run_in(package, "-c", code)
    modules = set(listed.stdout.split())
    assert {"asa_plugin.attacks.runner", "asa_plugin.adapters.encoder", "asa_plugin.bench.grid"} <= modules, listed


def test_no_modules_import_each_other_in_a_loop(package):
    result = run_in(package, "-c", CYCLES)
    assert result.returncode == 0, result.stderr
    assert "cycle:" not in result.stdout, result.stdout


# A deliberate back-arrow per kind: a utility importing the bench inside a function, a defence importing
# training at the top, and two "|" siblings (static_sets, attacks) importing each other.
BACK_ARROWS = [
    ("errors.py", "\n\ndef _back():\n    from asa_plugin.bench import grid  # noqa\n",
     "asa_plugin.errors -> asa_plugin.bench.grid"),
    ("defences/vanilla.py", "\nfrom asa_plugin.training import loop  # noqa\n",
     "asa_plugin.defences.vanilla -> asa_plugin.training.loop"),
    ("static_sets.py", "\n\ndef _sideways():\n    from asa_plugin.attacks import results  # noqa\n",
     "asa_plugin.static_sets -> asa_plugin.attacks.results"),
]


@pytest.mark.parametrize("module,added,named", BACK_ARROWS, ids=[m for m, _, _ in BACK_ARROWS])
def test_the_check_fails_on_a_back_arrow(tmp_path, module, added, named):
    tree = installed_layout(tmp_path)
    with open(tree / "asa_plugin" / module, "a", encoding="utf-8") as f:
        f.write(added)
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout and named in result.stdout, result.stdout


def test_a_new_module_outside_every_layer_fails(tmp_path):
    """``exhaustive``: a module added under asa_plugin/ must be placed in a layer."""
    tree = installed_layout(tmp_path)
    (tree / "asa_plugin" / "newcomer.py").write_text('"""Not yet in a layer."""\n', encoding="utf-8")
    result = lint(tree)
    assert result.returncode == 1 and "asa_plugin.newcomer" in result.stdout, result.stdout


def test_a_cycle_inside_a_layer_is_found(tmp_path):
    tree = installed_layout(tmp_path)
    with open(tree / "asa_plugin" / "bench" / "runs.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _back():\n    from asa_plugin.bench import grid  # noqa\n")
    result = run_in(tree, "-c", CYCLES)
    cycles = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("cycle:")]
    assert len(cycles) == 1 and {"asa_plugin.bench.grid", "asa_plugin.bench.runs"} <= set(cycles[0]), result.stdout


# Old import paths that README, docs, plugins or tests used: each still gives the very object that moved.
KEPT_PATHS = [
    ("asa_plugin.training.degenerate", "judge_rows", "asa_plugin.degenerate"),
    ("asa_plugin.evaluation", "evaluate_static_set", "asa_plugin.static_sets"),
    ("asa_plugin.attacks.config", "AttackConfig", "asa_plugin.config"),
    ("asa_plugin.attacks.results", "read_json", "asa_plugin.fileio"),
    ("asa_plugin.attacks.runner", "AttackSession", "asa_plugin.attacks.session"),
    ("asa_plugin.attacks.runner", "load_wrapper", "asa_plugin.attacks.session"),
    ("asa_plugin.attacks.runner", "resolve_cache_dir", "asa_plugin.attacks.session"),
    ("asa_plugin.attacks.jobs", "stderr_note", "asa_plugin.errors"),
    ("asa_plugin.bench.grid", "train_cell", "asa_plugin.bench.runs"),
    ("asa_plugin.training.distributed", "sum_across_processes", "asa_plugin.collectives"),
    ("asa_plugin.config", "tomllib", "asa_plugin.fileio"),
]


@pytest.mark.parametrize("old,name,new", KEPT_PATHS, ids=[f"{o}.{n}" for o, n, _ in KEPT_PATHS])
def test_an_old_import_path_gives_the_moved_object(old, name, new):
    import importlib

    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_renamed_objects_keep_their_old_names():
    from asa_plugin.attacks import results

    from asa_plugin import config, fileio
    from asa_plugin.bench import plan

    assert results.write_json is fileio.write_json_atomic and results.write_rows is fileio.write_jsonl_atomic
    assert config._build_defence is config.build_defence_config
    assert plan.Cell is plan.TrainingRun


@pytest.mark.parametrize("name,new", [("check_model_dir", "asa_plugin.checks"),
                                      ("check_resume", "asa_plugin.training.resume"),
                                      ("describe_job", "asa_plugin.training.banner"),
                                      ("check_bench", "asa_plugin.bench.checks"),
                                      ("build_recipes", "asa_plugin.attacks.warmup")])
def test_preflight_names_still_import_with_a_deprecation_warning(name, new):
    import importlib

    from asa_plugin import preflight

    with pytest.warns(DeprecationWarning, match=f"moved to {new}.{name}"):
        found = getattr(preflight, name)
    assert found is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError):
        preflight.no_such_check  # noqa: B018
