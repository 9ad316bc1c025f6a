"""``mainrag doctor``: what this host can run, what mainrag chose, and a
self-test in a child process, so that a crash becomes a report.

Nothing here loads llama.cpp into this process: the build is inspected on disk
and every model evaluation runs in a child (``llamacpp_probe``).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from mainrag import models
from mainrag.backends import llamacpp_runtime as runtime
from mainrag.backends.llamacpp_cpu import RELEVANT_FLAGS, CpuInfo, cpu_info


class PresetState(BaseModel):
    name: str
    path: str | None
    sha256_expected: str
    sha256_ok: bool | None  # None: not installed
    verified: bool  # the sha256 was recomputed (else only the size checked)


class SelfTest(BaseModel):
    model: str
    ok: bool
    detail: dict[str, object] | str  # the probe's measurements, or how it failed
    explanation: str | None = None


class DoctorReport(BaseModel):
    cpu: CpuInfo
    llama_cpp_version: str | None
    lib_dir: str | None
    variants_built: list[str]
    runtime: runtime.Runtime | None
    problem: str | None  # why llama.cpp cannot be used at all
    presets: list[PresetState]
    self_test: SelfTest | None

    @property
    def ok(self) -> bool:
        intact = all(p.sha256_ok is not False for p in self.presets)
        return intact and self.problem is None and (self.self_test is None or self.self_test.ok)


def diagnose(model: str | None = None, *, self_test: bool = True, verify: bool = True) -> DoctorReport:
    """Inspect the host and the llama.cpp build; probe ``model`` (default: the
    default preset if installed, else the smallest installed one)."""
    presets = [_preset_state(name, verify=verify) for name in models.PRESETS]
    model_path = _pick_model(model, presets)
    version = _version("llama-cpp-python")
    directory: Path | None = None
    decided: runtime.Runtime | None = None
    problem: str | None = None
    try:
        directory = runtime.lib_dir()
        decided = runtime.decide(model_path)
    except Exception as exc:  # noqa: BLE001 - the report names any failure
        problem = f"{type(exc).__name__}: {exc}"
    test = None
    if self_test and problem is None:
        test = _self_test(model_path, decided) if model_path else None
        if test is None:
            problem = "no model installed to test with: run `mainrag models install`"
    return DoctorReport(
        cpu=cpu_info(),
        llama_cpp_version=version,
        lib_dir=str(directory) if directory else None,
        variants_built=sorted(runtime.available_variants(directory)) if directory else [],
        runtime=decided,
        problem=problem,
        presets=presets,
        self_test=test,
    )


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _preset_state(name: str, *, verify: bool) -> PresetState:
    preset = models.PRESETS[name]
    path = models.cached_path(name)
    if not path.is_file():
        return PresetState(name=name, path=None, sha256_expected=preset.sha256, sha256_ok=None, verified=False)
    ok = _sha256(path) == preset.sha256 if verify else path.stat().st_size == preset.size
    return PresetState(name=name, path=str(path), sha256_expected=preset.sha256, sha256_ok=ok, verified=verify)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _pick_model(model: str | None, presets: list[PresetState]) -> Path | None:
    if model is not None:
        return models.resolve_model(model)
    installed = {p.name: Path(p.path) for p in presets if p.path}
    if models.DEFAULT_MODEL in installed:
        return installed[models.DEFAULT_MODEL]
    smallest = sorted(installed, key=lambda n: models.PRESETS[n].size)
    return installed[smallest[0]] if smallest else None


def _self_test(model_path: Path, decided: runtime.Runtime | None) -> SelfTest:
    result = runtime.run_probe(model_path, variant="auto", judge=True)
    if result.ok:
        return SelfTest(model=str(model_path), ok=True, detail=json.loads(result.detail))
    return SelfTest(model=str(model_path), ok=False, detail=result.detail, explanation=explain(result.detail, decided))


def explain(detail: str, decided: runtime.Runtime | None) -> str:
    """One sentence a user can act on, from how the self-test child ended."""
    code = (
        "the native llama.cpp build" if decided is None or decided.variant is None else f"the {decided.variant} variant"
    )
    if "SIGILL" in detail:
        if decided is not None and decided.amx:
            return (
                "the llama.cpp build uses AMX, which this kernel does not allow; delete the cached probe "
                f"{runtime.probe_cache()} and rerun, or report this host's CPU flags above"
            )
        return (
            f"{code} uses an instruction this CPU or kernel does not allow; reinstall the portable build "
            "with `bash scripts/install.sh` (it builds every CPU variant and picks one at run time)"
        )
    if "SIG" in detail:
        return f"{code} crashed ({detail}); rerun with `mainrag doctor` and report the output"
    return f"the self-test failed: {detail}"


def render(report: DoctorReport) -> str:
    """The report as plain text (no markup: paths and messages are shown as they are)."""
    cpu = report.cpu
    have = [f for f in RELEVANT_FLAGS if f in cpu.flags]
    lack = [f for f in RELEVANT_FLAGS if f not in cpu.flags]
    lines = [
        f"CPU      {cpu.model} (kernel {cpu.kernel})",
        f"  has    {' '.join(have) or '-'}",
        f"  lacks  {' '.join(lack) or '-'}",
        f"llama.cpp  llama-cpp-python {report.llama_cpp_version or 'not installed'} at {report.lib_dir or '-'}",
        f"  build  {'portable: ' + ' '.join(report.variants_built) if report.variants_built else 'native (one libggml-cpu)'}",
    ]
    if report.runtime is not None:
        r = report.runtime
        lines += [
            (
                f"  uses   {r.variant or 'native'}; AMX {'on' if r.amx else 'off'}; extra buffer types "
                f"{'on' if r.use_extra_bufts else 'off'}"
            ),
            f"  why    {r.note}",
        ]
    lines.append("models")
    for p in report.presets:
        check = "sha256" if p.verified else "size"
        state = "not installed" if p.path is None else (f"{check} ok" if p.sha256_ok else f"{check.upper()} MISMATCH")
        lines.append(f"  {p.name:<14} {state:<14} {p.sha256_expected}  {p.path or ''}")
    if report.problem:
        lines.append(f"problem  {report.problem}")
    if report.self_test is not None:
        lines += _render_test(report.self_test)
    lines.append("doctor: ok" if report.ok else "doctor: FAILED")
    return "\n".join(lines)


def _render_test(test: SelfTest) -> list[str]:
    if not test.ok:
        return [f"self-test  {test.model}: FAILED, {test.detail}", f"  fix    {test.explanation}"]
    d = test.detail
    assert isinstance(d, dict)
    return [
        f"self-test  {test.model}: ok",
        (
            f"  {d['prompt_tokens']}-token prompt at {d['prompt_tok_s']} tok/s on {d['threads']} threads "
            f"({d['variant']}, buffers {', '.join(map(str, d.get('buffer_types', []))) or '-'}); "
            f"one judgement: log-odds {d.get('judge_log_odds')}"
        ),
    ]
