"""No import cycles in paddle_coopflow: the module import graph, read from the source with `ast`, is acyclic.

Every ``import``/``from`` statement counts, at module level or inside a function (a function-level
import runs too, only later), each resolved to the module it executes: ``from .base import X`` is an
edge to ``pkg.base``; ``from . import X`` is an edge to the submodule ``pkg.X`` if there is one, else
to ``pkg`` itself (its ``__init__``), so a submodule taking a name back from its package's
``__init__`` is an edge like any other. The source is only parsed, never imported.
"""
import ast
import os
from typing import Dict, List, Optional, Set

import pytest

from conftest import ROOT

PACKAGE = "paddle_coopflow"


def module_files(root: str, package: str) -> Dict[str, str]:
    """{dotted module name: file} of every ``.py`` under ``root/package`` (a package is its ``__init__``)."""
    files = {}
    for folder, dirs, names in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(folder, root).split(os.sep)
        for name in sorted(n for n in names if n.endswith(".py")):
            parts = rel if name == "__init__.py" else rel + [name[:-3]]
            files[".".join(parts)] = os.path.join(folder, name)
    return files


def _imported(node: ast.AST, module: str, is_package: bool, modules: Set[str]) -> List[str]:
    """The modules of `modules` that the import statement `node` in `module` executes."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if node.level:  # relative: resolve against the package that holds `module`
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    if len(targets) < len(node.names) and base in modules:
        targets.append(base)  # a name (or *) taken from `base` itself
    return targets


def import_graph(root: str, package: str = PACKAGE) -> Dict[str, Set[str]]:
    """{module: set of modules of the package it imports} for every module under ``root/package``."""
    files = module_files(root, package)
    graph: Dict[str, Set[str]] = {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        is_package = path.endswith("__init__.py")
        graph[module] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for t in _imported(node, module, is_package, set(files))}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of `graph` as [a, b, ..., a], or None if the graph is acyclic (iterative depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond is no cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"y"}}) == ["y", "z", "y"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def _write(root, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_import_graph_resolves_relative_imports(tmp_path):
    """A synthetic package: each kind of statement lands on the module it executes."""
    _write(tmp_path, "pkg/__init__.py", "from .sub import Thing\n")
    _write(tmp_path, "pkg/errors.py", "import os\n")
    _write(tmp_path, "pkg/sub/__init__.py", "from .a import Thing\nfrom ..errors import Err\n")
    _write(tmp_path, "pkg/sub/a.py", "from . import b\nimport pkg.errors\n\ndef f():\n    from .. import sub2\n")
    _write(tmp_path, "pkg/sub/b.py", "from .c import *\n")
    _write(tmp_path, "pkg/sub/c.py", "")
    _write(tmp_path, "pkg/sub2.py", "")
    graph = import_graph(str(tmp_path), "pkg")
    assert graph == {"pkg": {"pkg.sub"}, "pkg.errors": set(), "pkg.sub": {"pkg.sub.a", "pkg.errors"},
                     "pkg.sub.a": {"pkg.sub.b", "pkg.errors", "pkg.sub2"}, "pkg.sub.b": {"pkg.sub.c"},
                     "pkg.sub.c": set(), "pkg.sub2": set()}
    assert find_cycle(graph) is None


def test_import_graph_sees_a_submodule_importing_its_package(tmp_path):
    """`from . import Err` in a submodule that its package's __init__ imports is a cycle, found."""
    _write(tmp_path, "pkg/__init__.py", "from .errors import Err\nfrom .base import Base\n")
    _write(tmp_path, "pkg/errors.py", "")
    _write(tmp_path, "pkg/base.py", "def f():\n    from . import Err\n")
    assert find_cycle(import_graph(str(tmp_path), "pkg")) == ["pkg", "pkg.base", "pkg"]


def test_package_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert len(graph) > 30 and "paddle_coopflow.cli" in graph  # the package was found and read
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))
