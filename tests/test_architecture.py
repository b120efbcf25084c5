"""Size limits of the code under sot_core/, tasks/ and flows/ (the developers' guide: modules under
~400 lines, functions under ~60 lines or a comment saying why).

A module may have at most `MAX_MODULE_LINES` lines. A function or method may have at most
`MAX_FUNCTION_LINES` lines from its ``def`` to its last line, not counting its docstring, unless
the line directly above it (above its decorators, or above the ``def`` itself) is a comment that
starts with ``# long function:`` and gives the reason. Parsed with `ast`, nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sot_core", "tasks", "flows")
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60
REASON = "# long function:"


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of the function's docstring (0 when it has none)."""
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def function_length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the ``def`` line to the function's last line, less its docstring."""
    return node.end_lineno - node.lineno + 1 - docstring_lines(node)


def has_reason(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> bool:
    """Whether the line above the decorators, or above the ``def``, is a ``# long function:`` comment."""
    first = min([d.lineno for d in node.decorator_list] + [node.lineno])
    above = {first - 1, node.lineno - 1}  # 1-based line numbers of the candidate lines
    return any(n >= 1 and lines[n - 1].strip().startswith(REASON) for n in above)


def long_functions(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = function_length(node)
            if length > MAX_FUNCTION_LINES and not has_reason(node, lines):
                found.append(f"{shown(path)}:{node.lineno} {node.name} has {length} lines "
                             f"(docstring excluded; limit {MAX_FUNCTION_LINES})")
    return found


def test_the_scanned_packages_exist():
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package
    assert len(source_files()) > 20


def test_no_module_is_over_the_limit():
    long = [f"{shown(p)}: {n} lines" for p in source_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (move a cohesive piece out):\n" + "\n".join(long)


def test_no_function_is_over_the_limit_without_a_reason():
    long = [line for p in source_files() for line in long_functions(p)]
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines without a '{REASON} <why>' comment above "
                      "them:\n" + "\n".join(long))


# The checker itself, on small made-up modules: a count that never fails would pass the tree too.
@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "probe.py"
    return lambda text: (path.write_text(text, encoding="utf-8"), path)[1]


def _function(body_lines: int, docstring_lines: int = 0, above: str = "", decorated: bool = False) -> str:
    doc = []
    if docstring_lines:
        doc = ['    """Doc.'] + ["    more"] * (docstring_lines - 2) + ['    """'] if docstring_lines > 1 else ['    """Doc."""']
    head = ([above] if above else []) + (["@decorator"] if decorated else []) + ["def f():"]
    return "\n".join(head + doc + ["    x = 1"] * (body_lines - 1)) + "\n"


def test_a_function_one_line_over_the_limit_is_found(probe):
    assert long_functions(probe(_function(MAX_FUNCTION_LINES))) == []  # def line + 59 = 60 lines
    assert len(long_functions(probe(_function(MAX_FUNCTION_LINES + 1)))) == 1


def test_the_docstring_does_not_count(probe):
    assert long_functions(probe(_function(MAX_FUNCTION_LINES, docstring_lines=30))) == []
    assert len(long_functions(probe(_function(MAX_FUNCTION_LINES + 1, docstring_lines=30)))) == 1


def test_a_reason_comment_directly_above_excuses_a_long_function(probe):
    reason = "# long function: one table of cases reads best in one place"
    assert long_functions(probe(_function(100, above=reason))) == []
    assert long_functions(probe(_function(100, above=reason, decorated=True))) == []
    assert len(long_functions(probe(_function(100, above="# a comment without the reason")))) == 1
    # a blank line between the comment and the function: not directly above
    assert len(long_functions(probe(_function(100, above=reason + "\n")))) == 1


def test_methods_and_nested_functions_are_checked(probe):
    method = "class C:\n" + "".join("    " + line + "\n" for line in _function(MAX_FUNCTION_LINES + 5).splitlines())
    assert [f.split()[1] for f in long_functions(probe(method))] == ["f"]
