"""The console module: the one place tangtoc writes to a terminal (its docstring's promise, checked), and its lines."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
from rich.console import Console

from tangtoc.console import console, say, to_stderr

SRC = Path(__file__).resolve().parent.parent / "src" / "tangtoc"
STREAMS = {"stdout", "stderr", "__stdout__", "__stderr__"}
PRINTERS = {"print", "print_exception", "print_exc", "print_tb", "print_stack", "pprint"}
CONSOLES = {"Console", "Progress", "Live"}


def _name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def terminal_writes(source: str) -> list[str]:
    """What ``source`` does that writes to the terminal or builds a console, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        what = None
        if isinstance(node, ast.Call):
            called, func = _name(node.func), node.func
            owner = _name(func.value) if isinstance(func, ast.Attribute) else None
            if called in PRINTERS:
                what = f"{called}()"
            elif called in CONSOLES:
                what = f"builds a {called}"
            elif called in {"write", "writelines"} and owner in STREAMS:
                what = f"sys.{owner}.{called}()"
            elif called == "write" and owner == "os":
                what = "os.write()"
        elif isinstance(node, ast.ImportFrom) and node.module == "rich" and any(a.name == "print" for a in node.names):
            what = "imports rich.print"
        if what:
            found.append(f"{node.lineno}: {what}")
    return found


def test_no_module_but_console_and_the_cli_writes_to_the_terminal() -> None:
    writers = {
        str(p.relative_to(SRC)): terminal_writes(p.read_text())
        for p in SRC.rglob("*.py")
        if p.relative_to(SRC).parts[0] != "cli"
    }
    assert {path: found for path, found in writers.items() if found and path != "console.py"} == {}
    assert writers["console.py"]  # the check sees the writes that are there


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("print('x', file=sys.stderr)", ["1: print()"]),
        ("import traceback\ntraceback.print_exception(e)", ["2: print_exception()"]),
        ("sys.stderr.write('x')", ["1: sys.stderr.write()"]),
        ("os.write(2, b'x')", ["1: os.write()"]),
        ("from rich.console import Console\nc = Console(stderr=True)", ["2: builds a Console"]),
        ("bar = rich.progress.Progress()", ["1: builds a Progress"]),
        ("out.print(text)", ["1: print()"]),
        ("from rich import print", ["1: imports rich.print"]),
        # Not writes: a docstring that shows print(), a file's own write, rich's markup helper.
        ('"""print(t) syncs."""\nf.write(data)\nfrom rich.markup import escape', []),
    ],
)
def test_the_check_sees_each_way_of_writing_to_the_terminal(source: str, found: list[str]) -> None:
    assert terminal_writes(source) == found


def test_say_prints_text_as_is_on_one_line() -> None:
    out = io.StringIO()
    text = "x[0] = y  # :x: " + "at train.py:12 " * 10
    say(Console(file=out, width=40), text)
    assert out.getvalue() == text + "\n"


def test_piped_consoles_are_160_columns_unless_columns_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console().width == 160 and console(stderr=True).width == 160  # pytest's streams are not terminals
    monkeypatch.setenv("COLUMNS", "100")
    assert console().width == 100


def test_to_stderr_writes_the_line_there(capsys: pytest.CaptureFixture[str]) -> None:
    to_stderr("tangtoc: peak 1 TFLOP/s")
    assert capsys.readouterr() == ("", "tangtoc: peak 1 TFLOP/s\n")
