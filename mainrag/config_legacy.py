"""Deprecated settings, still read: a judge's prompt was once chosen by ``layout``
(paper | prefix | conversation) and a ``judge_only`` switch; now ``judge_prompt``
(and a judge's ``prompt``) alone. The validators of :mod:`mainrag.config` pass
their input through here, and the benchmark runner upgrades old ``run.json``
settings the same way, so a resumed run compares like with like.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pydantic
import pydantic_settings

_LAYOUTS = ("paper", "prefix", "conversation")


def _legacy_prompt(layout: str | None, judge_only: Any = False) -> str:
    """The judge prompt that the deprecated ``layout`` and ``judge_only`` chose. Without the
    Predictor there was no conversation to continue: that layout judged in the paper's order."""
    layout = layout or "paper"
    if layout not in _LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(_LAYOUTS)}")
    if not _as_bool(judge_only):
        return layout
    return "judge-only-prefix" if layout == "prefix" else "judge-only"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _as_bool(value: Any) -> bool:
    """A ``judge_only`` value as given in Python, TOML or an environment variable."""
    if not isinstance(value, str):
        return bool(value)
    word = value.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(f"judge_only {value!r} is not a boolean")
    return word in _TRUE


# Frames a deprecation warning skips, so that it names the user's line, not mainrag's or pydantic's.
_INTERNAL = tuple(f"{Path(m.__file__).parent}{os.sep}" for m in (pydantic, pydantic_settings)) + (
    f"{Path(__file__).parent}{os.sep}",
)


def _deprecated(old: str, new: str) -> None:
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{old}: deprecated, use {new}", DeprecationWarning, stacklevel=level)


def upgrade_judge(data: dict[str, Any], *, judge_only: Any = False, warn: bool = True) -> dict[str, Any]:
    """A judge's settings with the deprecated ``layout`` turned into ``prompt``; under the
    deprecated ``judge_only``, a layout's prompt becomes its judge-only one."""
    data = dict(data)
    if "layout" in data:
        if data.get("prompt") is not None:
            raise ValueError("a judge takes `prompt`, not both `prompt` and its deprecated `layout`")
        data["prompt"] = data.pop("layout")
        if warn:
            _deprecated("a judge's `layout`", f"prompt = {data['prompt']!r}")
    if data.get("prompt") in _LAYOUTS:
        data["prompt"] = _legacy_prompt(data["prompt"], judge_only)
    return data


def upgrade_settings(data: dict[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """Settings with the deprecated ``layout`` and ``judge_only`` turned into ``judge_prompt``,
    and each judge's ``layout`` into its ``prompt``. Both the old and the new are an error."""
    old = [k for k in ("layout", "judge_only") if k in data]
    judge_only: Any = False
    if old:
        if "judge_prompt" in data:
            raise ValueError(f"judge_prompt replaces the deprecated {' and '.join(old)}: give judge_prompt only "
                             "(check the TOML file and MAINRAG_* variables too)")
        data = dict(data)
        layout, judge_only = data.pop("layout", None), data.pop("judge_only", False)
        data["judge_prompt"] = _legacy_prompt(layout, judge_only)
        if warn:
            _deprecated(" and ".join(f"`{k}`" for k in old), f"judge_prompt = {data['judge_prompt']!r}")
    if isinstance(data.get("judges"), list):
        data = {**data, "judges": [_upgrade_any_judge(j, _as_bool(judge_only), warn) for j in data["judges"]]}
    return data


def _upgrade_any_judge(judge: Any, judge_only: bool, warn: bool) -> Any:
    """A judge as given (a dict, or settings already validated), upgraded."""
    if hasattr(judge, "model_dump"):  # a JudgeSettings: only the deprecated judge_only changes it
        if not judge_only:
            return judge
        judge = judge.model_dump(exclude_unset=True)
    return upgrade_judge(judge, judge_only=judge_only, warn=warn) if isinstance(judge, dict) else judge


def legacy_env() -> dict[str, Any]:
    """``MAINRAG_LAYOUT`` and ``MAINRAG_JUDGE_ONLY``: no field reads them any more."""
    return {k: v for k in ("layout", "judge_only") if (v := os.environ.get(f"MAINRAG_{k.upper()}")) is not None}


