"""The package's import graph: one way, no cycles, and the backend registry on top of the runtimes.

Read from the source with `ast`, nothing imported: every `import` of a musebridge module
anywhere in a file counts, those deferred into functions too (a cycle hidden in a function
still breaks whoever calls it first), and so does the package a module sits in (importing
`a.b.c` runs `a/__init__` and `a/b/__init__`). Imports under `if TYPE_CHECKING:` never run
and do not count.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from musebridge.engine.decode.backends import RUNTIMES

ROOT = Path(__file__).resolve().parents[1]
SETUP = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
REGISTRY = "musebridge.engine.decode.backends"
INTERFACE = "musebridge.engine.decode.runtime"


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the distribution, by pyproject's package-dir."""
    out = {}
    for package, folder in SETUP["package-dir"].items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _runs(tree: ast.AST):
    """The import statements of a tree that run (those under `if TYPE_CHECKING:` do not)."""
    for node in ast.iter_child_nodes(tree):
        typing_only = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.orelse if typing_only else [node]:
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            yield from _runs(child)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The musebridge modules `name` imports (each with the packages above it)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in _runs(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
            continue
        base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
            else node.module or ""
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    out = set()
    for target in targets:
        parts = target.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in out if m in known and m != name and not name.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(g[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(g):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_graph_sees_every_module_and_its_imports():
    g = graph()
    assert len(g) > 80 and REGISTRY in g and INTERFACE in g
    assert "musebridge.engine.music.vocab" in g["musebridge.engine.music.tokenizer"]
    assert "musebridge.engine.decode.trt_runtime" not in g[REGISTRY]  # by name, through importlib
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_anywhere_in_the_package():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_runtimes_import_the_interface_never_the_registry_or_each_other():
    g = graph()
    runtimes = {module for module, _ in RUNTIMES.values()}
    assert runtimes <= set(g)
    for runtime in runtimes:
        assert INTERFACE in g[runtime], runtime
        assert REGISTRY not in g[runtime] and not (g[runtime] & (runtimes - {runtime})), (runtime, g[runtime])


def test_every_package_is_listed_for_a_non_editable_install():
    """setuptools installs only the packages pyproject lists: a sub-package left out is missing
    from a wheel though an editable install finds it."""
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert packages == set(SETUP["packages"])
