"""The house follows the data path: rooms per pipeline stage, imports that run one way, no circles.

The import graph is read from the source with ``ast`` (every ``import`` statement, also the lazy
ones inside functions), so it sees what the code says, not what one run happened to import. Each
check runs on a temporary copy with a deliberate fault too, so it is shown to be able to fail.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ernie_cl", "pretrain_tasks")
MAX_TOP_LEVEL_FILES = 6

# What each room may import of ernie_cl / pretrain_tasks (by module-name prefix; its own room always).
# The data path: corpus -> data -> model -> training -> evaluation; config is read by all of them.
ALLOWED = {
    "ernie_cl.corpus": ("ernie_cl.errors", "ernie_cl.progress", "ernie_cl.faults"),
    "pretrain_tasks": ("ernie_cl.errors", "ernie_cl.corpus", "ernie_cl.data.tokenizer", "ernie_cl.kernels"),
    "ernie_cl.config": ("ernie_cl.errors", "pretrain_tasks", "ernie_cl.model.balancing"),
    "ernie_cl.data": ("ernie_cl.errors", "ernie_cl.progress", "ernie_cl.faults", "ernie_cl.config", "ernie_cl.corpus",
                      "pretrain_tasks"),
    "ernie_cl.model": ("ernie_cl.errors", "ernie_cl.data.tokenizer", "ernie_cl.kernels"),
    "ernie_cl.training": ("ernie_cl.errors", "ernie_cl.progress", "ernie_cl.faults", "ernie_cl.config", "ernie_cl.corpus",
                          "ernie_cl.data", "ernie_cl.model", "pretrain_tasks"),
    "ernie_cl.evaluation": ("ernie_cl.errors", "ernie_cl.progress", "ernie_cl.config", "ernie_cl.corpus", "ernie_cl.data",
                            "ernie_cl.model", "ernie_cl.training", "pretrain_tasks"),
    "ernie_cl.export": ("ernie_cl.errors", "ernie_cl.model", "ernie_cl.evaluation"),
    "ernie_cl.kernels": ("ernie_cl.errors",),
    "ernie_cl.errors": (),
    "ernie_cl.progress": (),
    "ernie_cl.faults": (),
}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages (a package by its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the two packages it imports anywhere in its file.

    ``from X import n`` points at ``X.n`` when that is a module, else at ``X``; ``import a.b`` at
    ``a.b`` (or its nearest ancestor that is a module of ours). Relative imports are resolved from
    the file's own package. ``pretrain_tasks/__init__.py`` imports every task module dynamically
    (a new task is one new module): those edges are added, since ``ast`` cannot see them."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def ours(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                resolved = ours(target)
                if resolved and resolved != name:
                    graph[name].add(resolved)
    for name, path in modules.items():
        if name.startswith("pretrain_tasks.") and "@register_task" in path.read_text(encoding="utf-8"):
            graph["pretrain_tasks"].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as [a, b, ..., a], or None: depth-first search with three colours."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str):
        colour[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        path.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if colour[start] == 0 and (cycle := visit(start)):
            return cycle
    return None


def room_of(module: str) -> str:
    for room in sorted(ALLOWED, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return module


def wrong_way_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import that goes against the rooms' order (and any import of the CLI)."""
    wrong = []
    for module, targets in sorted(graph.items()):
        room = room_of(module)
        for target in sorted(targets):
            if target == "ernie_cl.cli" and module != "ernie_cl.cli":
                wrong.append(f"{module} -> {target}")
            elif room in ALLOWED and room_of(target) != room and not target.startswith(ALLOWED[room]):
                wrong.append(f"{module} -> {target}")
    return wrong


@pytest.fixture()
def copy_of_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_no_import_cycle_between_modules():
    graph = import_graph(ROOT)
    assert len(graph) > 50 and "ernie_cl.training.trainer" in graph  # the walk found the whole house
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_deliberate_cycle_is_found(copy_of_tree: Path):
    # errors is imported by nearly everything; a lazy import of the trainer inside it closes a circle
    errors = copy_of_tree / "ernie_cl" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _late():\n    from .training import trainer\n")
    cycle = find_cycle(import_graph(copy_of_tree))
    assert cycle is not None and cycle[0] == cycle[-1] and "ernie_cl.errors" in cycle and "ernie_cl.training.trainer" in cycle


def test_a_task_module_importing_its_package_is_a_cycle(copy_of_tree: Path):
    # the package imports every task module (dynamically); a task that imports the package closes a circle
    task = copy_of_tree / "pretrain_tasks" / "capitalization.py"
    task.write_text(task.read_text().replace("from .base import", "from pretrain_tasks import registered_tasks\nfrom .base import", 1))
    cycle = find_cycle(import_graph(copy_of_tree))
    assert cycle is not None and set(cycle) == {"pretrain_tasks", "pretrain_tasks.capitalization"}


def test_the_three_colour_search_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b"}}) == ["b", "b"]


def test_imports_run_down_the_data_path():
    assert wrong_way_imports(import_graph(ROOT)) == []


def test_an_import_against_the_path_is_caught(copy_of_tree: Path):
    examples = copy_of_tree / "ernie_cl" / "data" / "examples.py"
    examples.write_text(examples.read_text() + "\n\ndef _late():\n    from ernie_cl.training.trainer import train\n")
    assert wrong_way_imports(import_graph(copy_of_tree)) == ["ernie_cl.data.examples -> ernie_cl.training.trainer"]


def test_at_most_six_modules_directly_in_ernie_cl():
    top = sorted(p.name for p in (ROOT / "ernie_cl").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_FILES, top


def test_every_room_says_what_it_is_for_and_holds_no_logic():
    rooms = sorted(p.parent for p in (ROOT / "ernie_cl").glob("*/__init__.py"))
    assert {r.name for r in rooms} >= {"config", "corpus", "data", "model", "training", "evaluation"}
    for room in rooms:
        tree = ast.parse((room / "__init__.py").read_text(encoding="utf-8"))
        docstring = ast.get_docstring(tree)
        assert docstring and "May import" in docstring, f"{room.name}/__init__.py: say what the room is for and may import"
        logic = [type(n).__name__ for n in tree.body[1:]
                 if not isinstance(n, (ast.Import, ast.ImportFrom)) and not (isinstance(n, ast.Assign) and
                                                                            [getattr(t, "id", "") for t in n.targets] == ["__all__"])]
        assert logic == [], f"{room.name}/__init__.py holds more than names handed on: {logic}"
