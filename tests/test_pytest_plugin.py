"""The tangtoc pytest plugin: @pytest.mark.no_sync and the no_sync fixture fail a test at its first sync."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

# Once installed with its pytest11 entry point, pytest loads the plugin itself (a second `-p` would register it
# twice); until then it is named here.
_INSTALLED = any(ep.value == "tangtoc.pytest_plugin" for ep in entry_points(group="pytest11"))
PLUGIN = [] if _INSTALLED else ["-p", "tangtoc.pytest_plugin"]

STEP = """
import pytest
import torch
from torch import nn

model = nn.Linear(4, 2)
x = torch.randn(3, 4)
"""


def run(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_u=STEP + body)  # a name no module of this suite has
    # --strict-markers: the plugin registers its marker, as a project that refuses unknown ones needs
    return pytester.runpytest(*PLUGIN, "--strict-markers", "-p", "no:cacheprovider", *args)


def line_of(body: str, code: str) -> int:
    """The line of test_u.py that holds ``code`` (pytester writes the source stripped)."""
    return next(i for i, line in enumerate((STEP + body).strip().splitlines(), 1) if code in line)


def test_the_marker_fails_a_test_at_its_first_sync_naming_the_line(pytester: pytest.Pytester) -> None:
    body = """
@pytest.mark.no_sync
def test_logs_the_loss():
    loss = model(x).sum()
    print(loss.item())

@pytest.mark.no_sync
def test_clean_step():
    model(x).sum().backward()
    torch.zeros(3).mean().item()  # host data: would stay on the host on a GPU too
"""
    result = run(pytester, body)
    result.assert_outcomes(passed=1, failed=1)
    at = line_of(body, "print(loss.item())")
    result.stdout.fnmatch_lines([f"*SyncError: `loss.item()` at test_u.py:{at} waits for the GPU: reads a value*"])


def test_the_markers_keywords_reach_the_guard(pytester: pytest.Pytester) -> None:
    body = """
@pytest.mark.no_sync(on_sync="warn")
def test_warns():
    assert isinstance(model(x).sum().item(), float)
"""
    result = run(pytester, body)
    result.assert_outcomes(passed=1, warnings=1)
    at = line_of(body, ".item()")
    result.stdout.fnmatch_lines([f"*SyncWarning: `model(x).sum().item()` at test_u.py:{at} waits for the GPU*"])


def test_a_positional_marker_argument_is_refused_with_the_form_to_use(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.no_sync("warn")
def test_it():
    pass
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.no_sync takes keywords*write e.g. @pytest.mark.no_sync(on_sync='warn')*"]
    )


def test_the_fixture_guards_a_region_of_a_test(pytester: pytest.Pytester) -> None:
    body = """
def test_step_region(no_sync):
    batch = torch.randn(3, 4)  # set-up outside the region
    with no_sync():
        out = model(batch)
    out.sum().item()  # after the region: allowed
    with no_sync():
        if out.sum() > 0:
            pass
"""
    result = run(pytester, body)
    result.assert_outcomes(failed=1)
    at = line_of(body, "if out.sum() > 0:")
    result.stdout.fnmatch_lines([f"*SyncError: `out.sum() > 0` at test_u.py:{at} waits for the GPU*"])
