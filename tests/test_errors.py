"""The errors module: every error (and warning) class tangtoc has lives in tangtoc/errors.py, and everything tangtoc
raises is one of them, or an argument's ValueError/TypeError (its docstring's promise, checked on the source)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import tangtoc.errors
from tangtoc.errors import TangtocError

SRC = Path(__file__).resolve().parent.parent / "src" / "tangtoc"
ERRORS = {
    name
    for name, obj in vars(tangtoc.errors).items()
    if isinstance(obj, type) and issubclass(obj, TangtocError) and obj.__module__ == "tangtoc.errors"
}
# Exceptions that are not errors: they carry control to a handler in tangtoc (or end the process), and a user
# never has to catch them.
CONTROL_FLOW = {
    ("diagnose/runner.py", "StopScript"),  # a watcher stops the script after its last step (a BaseException)
    ("diagnose/audit.py", "StopAudit"),
    ("diagnose/profile.py", "StopProfile"),
    ("train/signals.py", "Terminated"),  # SIGTERM as a KeyboardInterrupt, so that Ctrl-C's clean-up runs
    ("walk.py", "_Refused"),  # turned into an UnmovableError with its path by walk_batch
}
ARGUMENT_ERRORS = {"ValueError", "TypeError", "ArgumentTypeError"}  # ArgumentTypeError: argparse's, for a flag
OTHER_RAISES = {
    ("*", "ImportError"): "a missing optional extra, reported as every Python package reports it",
    ("train/run.py", "SystemExit"): "fit(on_preempt='exit') ends the process after its checkpoint",
    ("units.py", "AssertionError"): "an internal invariant ('unreachable')",
}


def _name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _sources() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text()) for p in SRC.rglob("*.py")}


def exception_classes(trees: dict[str, ast.Module]) -> set[tuple[str, str]]:
    """(file, class) of every class whose bases make it an exception: a built-in one, one named like an error, or
    (transitively) another such class of the package."""
    known = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    classes = [(f, c) for f, tree in trees.items() for c in ast.walk(tree) if isinstance(c, ast.ClassDef)]
    found: set[tuple[str, str]] = set()
    while True:
        more = {
            (f, c.name)
            for f, c in classes
            if any(
                (b := _name(base)) in known or (b or "").endswith(("Error", "Exception", "Interrupt", "Exit"))
                for base in c.bases
            )
        }
        if more == found:
            return found
        found = more
        known |= {c for _, c in found}


def test_every_error_class_is_defined_in_errors_py() -> None:
    outside = {(f, c) for f, c in exception_classes(_sources()) if f != "errors.py"}
    assert outside == CONTROL_FLOW  # an error class goes in errors.py; a control-flow exception gone leaves the list


def test_the_class_check_sees_an_error_class_by_any_base() -> None:
    trees = {"a.py": ast.parse("class A(ValueError): ...\nclass B(A): ...\nclass C(torch.OutOfMemoryError): ...")}
    trees["b.py"] = ast.parse("class D(B): ...\nclass Plain: ...")
    assert exception_classes(trees) == {("a.py", "A"), ("a.py", "B"), ("a.py", "C"), ("b.py", "D")}


def test_every_error_is_a_tangtoc_error_and_a_builtin_one_a_user_already_catches() -> None:
    for name in ERRORS - {"TangtocError"}:
        cls = getattr(tangtoc.errors, name)
        caught = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
        assert caught, f"{name} subclasses no built-in exception a user would catch"


def raised(trees: dict[str, ast.Module]) -> set[tuple[str, str]]:
    """(file, name) of what each ``raise X(...)`` raises that is neither a tangtoc error, nor an argument's error, nor
    built by a function annotated to return a tangtoc error (``raise connect_error(e, ...)``)."""
    factories = {
        f.name
        for tree in trees.values()
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef) and f.returns is not None and _name(f.returns) in ERRORS
    }
    found = set()
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
                continue  # a bare raise, or an error object raised again
            func = node.exc.func
            if isinstance(func, ast.Call) and _name(func.func) == "type":
                continue  # raise type(e)(...): the caught error again, with context added
            name = _name(func)
            if name is not None and name not in ERRORS | ARGUMENT_ERRORS | factories:
                found.add((path, name))
    return found


def test_tangtoc_raises_only_its_errors_and_argument_errors() -> None:
    control = {c for _, c in CONTROL_FLOW}
    found = {(f, n) for f, n in raised(_sources()) if n not in control}
    assert {(f, n) for f, n in found if (f, n) not in OTHER_RAISES and ("*", n) not in OTHER_RAISES} == set()
    assert found >= {key for key in OTHER_RAISES if key[0] != "*"}  # an exception fixed leaves the list


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("raise RuntimeError('x')", {("m.py", "RuntimeError")}),
        ("raise tangtoc.errors.UsageError('x')", set()),
        ("raise ValueError(f'expected {a}, got {b}')", set()),
        ("def make() -> CheckpointError: ...\nraise make()", set()),
        ("def make() -> RuntimeError: ...\nraise make()", {("m.py", "make")}),
        ("try:\n    pass\nexcept OSError as e:\n    raise type(e)('more') from None", set()),
    ],
)
def test_the_raise_check_sees_what_is_raised(source: str, found: set[tuple[str, str]]) -> None:
    assert raised({"m.py": ast.parse(source)}) == found
