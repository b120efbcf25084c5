"""Systematic mutants of a Python module: every standard operator mutation the `ast` allows.

`generate(source)` parses a module and returns one `Mutant` per mutation site and operator, each
with the whole mutated module (`ast.unparse`, so comments are gone and lines move; `line` and
`col` refer to the original source). The operators (the classic set of mutmut and cosmic-ray,
one or two replacements per site so that a 2-core machine can run them all):

- ``binop``: arithmetic swap ``+ <-> -``, ``* <-> /``, ``// -> /``, ``% -> *``, ``** -> *``,
  ``@ -> *``, ``& <-> |``, ``^ -> |`` (augmented assignments too: ``+= -> -=``);
- ``compare``: the boundary (``< <-> <=``, ``> <-> >=``) and the negation (``< -> >=``,
  ``== <-> !=``, ``in <-> not in``, ``is <-> is not``);
- ``boolop``: ``and <-> or``; ``not``: ``not x -> x``; ``neg``: ``-x -> x``;
- ``const``: an int c -> c + 1, a float c -> 2c (0.0 -> 1.0), ``True <-> False``;
- ``return``: ``return x -> return None``;
- ``remove``: an augmented assignment or a bare call statement -> ``pass``.

Left alone, because a test that pins them pins wording, not behaviour: docstrings, string
constants, f-strings, everything inside a ``raise`` statement, ``assert`` statements, calls to
a logger, ``warnings.warn`` and ``print``, type annotations, and string concatenation.

Excluded by the source, as mutmut does: a node that starts on a line carrying the comment
``# pragma: no mutate`` (followed by the reason, e.g. ``# pragma: no mutate: block size, speed
only``) is not mutated. Such a site must be one no test can tell apart (a speed-only constant);
`generate` hands the mutants it left out to the caller, so the report counts them with their reason.
"""
from __future__ import annotations

import ast
import copy
import io
import tokenize
from dataclasses import dataclass

_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.FloorDiv: ast.Div, ast.Mod: ast.Mult, ast.Pow: ast.Mult, ast.MatMult: ast.Mult,
          ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
          ast.LShift: ast.RShift, ast.RShift: ast.LShift}
# Per comparison operator: its boundary shift (if any) and its negation.
_COMPARE = {ast.Lt: (ast.LtE, ast.GtE), ast.LtE: (ast.Lt, ast.Gt), ast.Gt: (ast.GtE, ast.LtE),
            ast.GtE: (ast.Gt, ast.Lt), ast.Eq: (None, ast.NotEq), ast.NotEq: (None, ast.Eq),
            ast.In: (None, ast.NotIn), ast.NotIn: (None, ast.In), ast.Is: (None, ast.IsNot),
            ast.IsNot: (None, ast.Is)}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
           ast.Pow: "**", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
           ast.LShift: "<<", ast.RShift: ">>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
           ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in", ast.Is: "is",
           ast.IsNot: "is not", ast.And: "and", ast.Or: "or"}
PRAGMA = "pragma: no mutate"
_QUIET_CALLS = {"warn", "print", "debug", "info", "warning", "error", "exception", "critical"}


@dataclass(frozen=True)
class Mutant:
    """One mutation: where (1-based lines, 0-based column of the original source; `stmt_line`: the
    first line of the innermost statement holding it), which operator, what changed
    (``"a -> b"``), and the whole mutated module."""

    line: int
    col: int
    end_line: int
    stmt_line: int
    operator: str
    change: str
    source: str

    @property
    def key(self) -> str:
        return f"{self.line}:{self.col}:{self.operator}:{self.change}"


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _quiet_call(node: ast.AST) -> bool:
    """A call whose only effect is a message: logger.info(...), warnings.warn(...), print(...)."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in _QUIET_CALLS


def _skipped_subtrees(tree: ast.AST) -> set[int]:
    """ids of the nodes never mutated: inside raise/assert, message calls, f-strings, annotations."""
    skip: set[int] = set()

    def drop(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr)) or _quiet_call(node):
            drop(node)
        elif isinstance(node, ast.Expr) and _quiet_call(node.value):
            drop(node)
        elif isinstance(node, ast.arg):
            drop(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            drop(node.returns)
        elif isinstance(node, ast.AnnAssign):
            drop(node.annotation)
        elif isinstance(node, ast.BinOp) and (_is_str(node.left) or _is_str(node.right)):
            drop(node)  # building a message: "a" + b, "%s" % x
    return skip


def _sites(node: ast.AST) -> list[tuple[str, str, callable]]:
    """The mutations of one node: (operator, change, function applying it to a copy of the node)."""
    out = []

    def swap(op_field, new_cls, label):
        def apply(n):
            setattr(n, op_field, new_cls())
        return (label, apply)

    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOP:
        new = _BINOP[type(node.op)]
        label, apply = swap("op", new, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}")
        out.append(("binop", label, apply))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in _COMPARE.get(type(op), ()):
                if new is None:
                    continue

                def apply(n, i=i, new=new):
                    n.ops[i] = new()
                out.append(("compare", f"{_SYMBOL[type(op)]} -> {_SYMBOL[new]}", apply))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        label, apply = swap("op", new, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}")
        out.append(("boolop", label, apply))
    elif isinstance(node, ast.Constant):
        out += _constant_sites(node)
    return out


def _constant_sites(node: ast.Constant) -> list[tuple[str, str, callable]]:
    value = node.value
    if isinstance(value, bool):
        new = not value
    elif isinstance(value, int):
        new = value + 1
    elif isinstance(value, float):
        new = value * 2 if value != 0 else 1.0
    else:
        return []

    def apply(n):
        n.value = new
    return [("const", f"{value!r} -> {new!r}", apply)]


def _replacing_sites(parent: ast.AST, field: str, node: ast.AST) -> list[tuple[str, str, callable]]:
    """Mutations that replace `node` inside `parent.field`: not/neg removal, statement removal."""
    out = []
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        kind = "not" if isinstance(node.op, ast.Not) else "neg"
        out.append((kind, f"{'not ' if kind == 'not' else '-'}x -> x", lambda n: n.operand))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append(("return", "return x -> return None", lambda n: ast.Return(value=ast.Constant(None))))
    elif isinstance(node, ast.AugAssign) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        out.append(("remove", "statement -> pass", lambda n: ast.Pass()))
    return out


def pragmas(source: str) -> dict[int, str]:
    """{line: reason} of the lines whose comment holds ``pragma: no mutate`` (reason ``""`` when none)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and PRAGMA in token.string:
            found[token.start[0]] = token.string.split(PRAGMA, 1)[1].lstrip(" :-").strip()
    return found


def generate(source: str, excluded: list | None = None) -> list[Mutant]:
    """Every mutant of `source` (see the module docstring), in source order, without duplicates
    and without mutants whose module is unchanged. Mutants of nodes on a ``# pragma: no mutate``
    line are left out; when `excluded` is a list they are appended to it."""
    tree = ast.parse(source)
    excluded_lines = pragmas(source)
    skip = _skipped_subtrees(tree)
    baseline = ast.unparse(tree)
    # (path to the node as (field, index) steps, node, statement line, operator, change, apply, replaces)
    plans = []
    for path, parent, field, node, stmt_line in _walk(tree):
        if id(node) in skip:
            continue
        for kind, change, apply in _sites(node):
            plans.append((path, node, stmt_line, kind, change, apply, False))
        for kind, change, apply in _replacing_sites(parent, field, node):
            plans.append((path, node, stmt_line, kind, change, apply, True))
    mutants, seen = [], {baseline}
    for path, node, stmt_line, kind, change, apply, replaces in plans:
        mutated = copy.deepcopy(tree)
        target_parent, last = _resolve(mutated, path)
        target = _get(target_parent, last)
        if replaces:
            _set(target_parent, last, apply(target))
        else:
            apply(target)
        text = ast.unparse(ast.fix_missing_locations(mutated))
        if text in seen:
            continue
        seen.add(text)
        mutant = Mutant(node.lineno, node.col_offset, node.end_lineno, stmt_line, kind, change, text)
        if node.lineno not in excluded_lines:
            mutants.append(mutant)
        elif excluded is not None:
            excluded.append(mutant)
    mutants.sort(key=lambda m: (m.line, m.col))
    return mutants


def _walk(tree: ast.AST):
    """(path, parent, field step, node, line of the innermost statement holding it) for every node
    below `tree`, depth first."""
    stack = [((), None, None, tree, 1)]
    while stack:
        path, parent, step, node, stmt_line = stack.pop()
        if parent is not None and _is_docstring(parent, node):
            continue
        if isinstance(node, ast.stmt):
            stmt_line = node.lineno
        if parent is not None:
            yield path, parent, step, node, stmt_line
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        stack.append((path + ((field, i),), node, (field, i), child, stmt_line))
            elif isinstance(value, ast.AST):
                stack.append((path + ((field, None),), node, (field, None), value, stmt_line))


def _is_docstring(parent: ast.AST, node: ast.AST) -> bool:
    body = getattr(parent, "body", None)
    return (isinstance(body, list) and body and body[0] is node and isinstance(node, ast.Expr)
            and _is_str(node.value))


def _get(parent: ast.AST, step: tuple[str, int | None]) -> ast.AST:
    field, index = step
    value = getattr(parent, field)
    return value if index is None else value[index]


def _set(parent: ast.AST, step: tuple[str, int | None], new: ast.AST) -> None:
    field, index = step
    if index is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[index] = new


def _resolve(tree: ast.AST, path) -> tuple[ast.AST, tuple[str, int | None]]:
    """The parent of the node at `path` in `tree` and the last step to it."""
    node = tree
    for step in path[:-1]:
        node = _get(node, step)
    return node, path[-1]
