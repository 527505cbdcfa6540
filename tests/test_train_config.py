"""fit()'s settings have one source (FitConfig): its signature and docstring cannot drift from the fields."""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tangtoc.train.fit as fit_module
from tangtoc.step import PRECISIONS
from tangtoc.train.config import NONFINITE_POLICIES, PREEMPT_POLICIES, FitConfig
from tangtoc.train.distributed import STRATEGIES

# ``import tangtoc.train.fit`` yields the function (the package re-exports its name): take the module from it
FIT_MODULE = inspect.getmodule(fit_module)
fit = FIT_MODULE.fit  # type: ignore[union-attr]
NOT_SETTINGS = {"model", "data", "optimizer", "loss_fn", "eval_data", "device", "callbacks"}


def test_fit_takes_exactly_the_settings_with_their_defaults() -> None:
    params = inspect.signature(fit).parameters
    settings = {f.name: f for f in fields(FitConfig)}
    assert set(params) - NOT_SETTINGS == set(settings), "fit()'s keywords and FitConfig's fields differ"
    for name, f in settings.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        assert params[name].default is default or params[name].default == default, name


def test_every_setting_is_documented_once_and_fits_docstring_carries_it() -> None:
    doc = fit.__doc__ or ""
    assert "{settings}" not in doc
    for f in fields(FitConfig):
        text = f.metadata.get("doc")
        assert text, f"FitConfig.{f.name} has no doc"
        first_words = " ".join(f"{f.name}: {text}".split()[:6])
        assert first_words in " ".join(doc.split()), f.name


def test_choices_are_literal_types_matching_what_is_validated() -> None:
    hints = typing.get_type_hints(FitConfig)
    for name, choices in (("precision", PRECISIONS), ("strategy", STRATEGIES), ("on_nonfinite", NONFINITE_POLICIES),
                          ("on_preempt", PREEMPT_POLICIES)):  # fmt: skip
        assert typing.get_args(hints[name]) == tuple(choices), name


def _train(tmp_path: Path, **kw: object) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    fit(model, batches, loss_fn=F.cross_entropy, steps=2, log_every=1, progress=False, checkpoint_dir=tmp_path, **kw)


def test_log_dir_none_writes_no_metrics_as_documented(tmp_path: Path) -> None:
    _train(tmp_path / "off", log_dir=None)
    assert sorted(p.name for p in (tmp_path / "off").iterdir() if not p.name.startswith(".")) == ["step-00000002.pt"]
    _train(tmp_path / "default")
    assert {"metrics.jsonl", "step-00000002.pt"} <= {p.name for p in (tmp_path / "default").iterdir()}
    _train(tmp_path / "ckpt", log_dir=tmp_path / "logs")
    assert (tmp_path / "logs" / "metrics.jsonl").exists() and not (tmp_path / "ckpt" / "metrics.jsonl").exists()


def test_a_bad_choice_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"fit: strategy must be one of auto, ddp, fsdp, got 'zero'"):
        FitConfig(steps=1, strategy="zero")  # type: ignore[arg-type]
