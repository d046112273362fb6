"""A gate on function size (issue 19): no function of src/aggjobs is over 50 lines, counted
from its `def` to its last line (decorators excluded, docstring included)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import aggjobs

MAX_LINES = 50
SRC = Path(aggjobs.__file__).parent


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (n lines)` of every function or method under `root` over `limit`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} "
                                 f"{node.name} ({size} lines)")
    return found


def test_no_function_is_over_50_lines() -> None:
    found = long_functions(SRC)
    assert not found, "split these into smaller, named functions:\n" + "\n".join(found)


def test_the_gate_sees_a_long_function_and_counts_from_def(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 1))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        f"@decorator\ndef fits():\n{body}\n\n\nclass C:\n    async def over(self):\n"
        f"{textwrap.indent(body, '    ')}\n        pass\n")
    assert long_functions(tmp_path / "pkg") == ["pkg/m.py:55 over (51 lines)"]
