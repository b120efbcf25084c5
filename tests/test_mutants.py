"""The mutant generator of `benchmarks.mutation`: the mutants of a small module, exactly."""
from __future__ import annotations

import ast

from benchmarks.mutants import generate, pragmas

SOURCE = '''"""Module docstring: never mutated."""
import logging
logger = logging.getLogger(__name__)


def f(x: int | None, y=2):
    """Docstring."""
    if x < y and not x == 0:
        logger.info("x is %d", x + 1)
        raise ValueError(f"bad {x + 1}")
    x += 1
    print(x * 3)
    g(x)
    assert x > 0, "message"
    return -x / 2.5
'''

EXPECTED = {
    (6, "const", "2 -> 3"),  # the default; the annotation's | is not an operator to mutate
    (8, "compare", "< -> <="), (8, "compare", "< -> >="), (8, "boolop", "and -> or"),
    (8, "not", "not x -> x"), (8, "compare", "== -> !="), (8, "const", "0 -> 1"),
    # line 9 (logging) and 10 (raise), 12 (print) and 14 (assert): nothing
    (11, "binop", "+ -> -"), (11, "remove", "statement -> pass"), (11, "const", "1 -> 2"),
    (13, "remove", "statement -> pass"),
    (15, "return", "return x -> return None"), (15, "neg", "-x -> x"), (15, "binop", "/ -> *"),
    (15, "const", "2.5 -> 5.0"),
}


def test_generates_exactly_the_standard_mutants():
    mutants = generate(SOURCE)
    assert {(m.line, m.operator, m.change) for m in mutants} == EXPECTED
    assert len(mutants) == len(EXPECTED)  # no duplicates


def test_each_mutant_changes_only_its_site():
    baseline = ast.unparse(ast.parse(SOURCE))
    by_site = {(m.line, m.operator, m.change): m.source for m in generate(SOURCE)}
    for site, source in by_site.items():
        ast.parse(source)  # every mutant is a valid module
        assert source != baseline, site
    assert by_site[(8, "compare", "< -> <=")] == baseline.replace("if x < y", "if x <= y")
    assert by_site[(11, "binop", "+ -> -")] == baseline.replace("x += 1", "x -= 1")
    assert by_site[(13, "remove", "statement -> pass")] == baseline.replace("g(x)", "pass")
    assert by_site[(15, "return", "return x -> return None")] == baseline.replace("return -x / 2.5", "return None")
    assert by_site[(6, "const", "2 -> 3")] == baseline.replace("y=2", "y=3")


def test_a_pragma_line_is_left_out_and_handed_back_with_its_reason():
    source = ("BLOCK = 4096  # pragma: no mutate: speed only\n"
              "LIMIT = 10\n"
              "TEXT = '# pragma: no mutate'\n")  # inside a string, not a comment: still mutated
    excluded = []
    mutants = generate(source, excluded)
    assert {(m.line, m.change) for m in mutants} == {(2, "10 -> 11")}
    assert [(m.line, m.change) for m in excluded] == [(1, "4096 -> 4097")]
    assert pragmas(source) == {1: "speed only"}
    assert len(generate(source)) == 1  # without a list the excluded mutants are simply left out


def test_survivor_notes_are_found_by_code_fragment_not_by_line():
    from benchmarks.mutation_report import explain

    moved = {"file": "sot_core/ot/sinkhorn.py", "line": 999, "change": "<= -> <", "code": "if err <= tol:"}
    assert "threshold" in explain(moved)
    assert explain({**moved, "change": "<= -> >"}) is None
    assert explain({**moved, "file": "sot_core/ot/costs.py"}) is None
