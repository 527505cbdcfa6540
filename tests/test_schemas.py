"""Every --json document carries its schema and version, and keeps every documented field while its version stays
(tests/data/json_schemas.json is the record; docs/JSON.md the documentation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tangtoc.cli import main
from tangtoc.schemas import SCHEMAS, field_paths

ROOT = Path(__file__).resolve().parent.parent
RECORD = json.loads((ROOT / "tests" / "data" / "json_schemas.json").read_text())


def written(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    if name == "tangtoc.advise":
        # A workload with an op no FLOP formula covers (an FFT), so advice.uncounted[] has its fields too.
        out = tmp_path / "a.json"
        factory = f"{ROOT / 'tests' / 'advise_factories.py'}:fnet_style"
        argv = ["advise", "--factory", factory, "--batch-size", "4", "--target", "h100"]
        main([*argv, "--steps", "10", "--min-time", "0.01", "--threads", "1", "--json", str(out)])
        return json.loads(out.read_text())
    if name in ("tangtoc.audit", "tangtoc.profile"):
        # A script with findings of every kind (audit) and with data waits (profile), so every list has items.
        script = ROOT / "examples" / ("sync_heavy.py" if name == "tangtoc.audit" else "profile/input_bound.py")
        main([name.split(".")[1], str(script), "--steps", "2", "--json", str(tmp_path / "r.json")])
        return json.loads((tmp_path / "r.json").read_text())
    if name == "tangtoc.train":
        main(["train", "mlp", "--steps", "4", "--log-every", "2", "--no-save", "--threads", "1", "--json"])
        return json.loads(capsys.readouterr().out)
    if name == "tangtoc.bench":
        main(["bench", "small-ops", "--op-sizes", "100", "--min-time", "0.01", "--json", str(tmp_path / "b.json")])
        return json.loads((tmp_path / "b.json").read_text())
    if name == "tangtoc.doctor":
        main(["doctor", "--json"])
        return json.loads(capsys.readouterr().out)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    record = gpu_check.StepRecord("device", "the device", 15, status="ok", seconds=1.0, exit_code=0)
    harness = gpu_check.Harness(tmp_path, tmp_path, True, 100.0, gpu_check.PLAN[:1], [record])
    return harness.summary() | {"figures": [gpu_check.Figure("device", "x", 1.0, "s").judge(True).to_dict()]}


@pytest.mark.parametrize("name", sorted(RECORD))
def test_no_documented_field_disappears_without_a_new_version(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = written(name, tmp_path, capsys)
    assert (data["schema"], data["schema_version"]) == (name, SCHEMAS[name])
    if SCHEMAS[name] != RECORD[name]["version"]:
        pytest.fail(f"{name} is now version {SCHEMAS[name]}: update its entry in tests/data/json_schemas.json and "
                    "docs/JSON.md")  # fmt: skip
    missing = sorted(set(RECORD[name]["fields"]) - set(field_paths(data)))
    assert not missing, (
        f"{name} version {SCHEMAS[name]} no longer writes {missing}: a script reading them breaks. Keep them, or "
        "raise the version in tangtoc/schemas.py and record the new field list."
    )


def test_every_schema_is_recorded_and_documented() -> None:
    docs = (ROOT / "docs" / "JSON.md").read_text()
    assert set(SCHEMAS) == set(RECORD)
    for name, version in SCHEMAS.items():
        assert f"`{name}` version {version}" in docs
        assert all(f"`{field}`" in docs for field in RECORD[name]["fields"]), name
