"""House rules the code keeps: no file over 400 lines and no function over 60 in the package and tools/."""
import ast
import os

from conftest import ROOT

MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def _python_files():
    for top in ("paddle_coopflow", "tools"):
        for folder, dirs, names in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            yield from (os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))


def too_long(path: str):
    """[(what, lines)] of `path`'s file and functions over the limits."""
    with open(path, encoding="utf-8") as fh:
        src = fh.read()
    found = [("file", src.count("\n"))] if src.count("\n") > MAX_FILE_LINES else []
    for node in ast.walk(ast.parse(src, path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                found.append((f"{node.name} (line {node.lineno})", n))
    return found


def test_too_long_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert too_long(str(tmp_path / "m.py")) == [("long (line 5)", MAX_FUNCTION_LINES + 1)]


def test_files_and_functions_are_short():
    files = list(_python_files())
    assert len(files) > 40
    over = {os.path.relpath(p, ROOT): f for p in files for f in [too_long(p)] if f}
    assert not over, over
