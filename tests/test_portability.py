"""The embedded backend runs on every x86-64 host: the CPU code is chosen at run
time from what the kernel allows, and a crash becomes a report.

The variant choice is tested on recorded /proc/cpuinfo flags of the hosts this
project meets; the rest runs the real build and real models in child processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from mainrag import models
from mainrag.backends import llamacpp_runtime as runtime
from mainrag.backends.llamacpp_cpu import VARIANTS, best_variant, cpu_info, parse_cpuinfo
from mainrag.doctor import diagnose, explain, render

_BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 popcnt"
_AVX512 = "avx512f avx512cd avx512vl avx512dq avx512bw avx512ifma avx512vbmi avx512_vnni avx512_bf16"
# Flags as the kernel lists them on the hosts seen so far (trimmed to what matters).
SAPPHIRE_RAPIDS = f"{_BASE} {_AVX512} avx_vnni avx512_fp16 amx_bf16 amx_tile amx_int8"
EPYC_ZEN4 = f"{_BASE} {_AVX512}"
EPYC_ZEN3 = _BASE
ALL = set(VARIANTS)


def cpu(flags: str, model: str = "test CPU"):  # type: ignore[no-untyped-def]
    return parse_cpuinfo(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: x\n")


def test_cpuinfo_parsing_reads_the_first_cpu() -> None:
    info = cpu(EPYC_ZEN4, "AMD EPYC 9R14")
    assert info.model == "AMD EPYC 9R14"
    assert "avx512_bf16" in info.flags and "x" not in info.flags
    assert not info.has_amx and cpu(SAPPHIRE_RAPIDS).has_amx


@pytest.mark.parametrize(
    ("flags", "amx_ok", "expected"),
    [
        (SAPPHIRE_RAPIDS, False, "zen4"),  # AMX not proven: the best variant without it
        (SAPPHIRE_RAPIDS, True, "sapphirerapids"),
        (EPYC_ZEN4, True, "zen4"),  # no AMX flag: never the AMX variant
        (EPYC_ZEN3, False, "haswell"),
        ("fpu sse sse2", False, "x64"),
    ],
)
def test_best_variant_uses_only_what_the_kernel_lists(flags: str, amx_ok: bool, expected: str) -> None:
    assert best_variant(cpu(flags), ALL, amx_ok=amx_ok) == expected


def test_best_variant_among_the_built_ones_only() -> None:
    assert best_variant(cpu(SAPPHIRE_RAPIDS), {"x64", "haswell"}, amx_ok=True) == "haswell"
    with pytest.raises(Exception, match="no llama.cpp CPU variant"):
        best_variant(cpu("fpu"), {"haswell"}, amx_ok=False)


def test_installed_build_is_portable() -> None:
    """scripts/install.sh must install the every-variant build, not -march=native."""
    built = runtime.available_variants(runtime.lib_dir())
    assert {"x64", "haswell", "skylakex", "zen4", "sapphirerapids"} <= built, built
    assert not (runtime.lib_dir() / "libggml-cpu.so").exists()


def test_a_child_killed_by_sigill_is_reported_not_fatal() -> None:
    result = runtime.run_child(
        [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(signal.SIGILL)})"], timeout=60
    )
    assert not result.ok
    assert "SIGILL" in result.detail
    amx_runtime = runtime.Runtime(
        lib_dir="/x", portable=True, variant="sapphirerapids", build_has_amx=True, amx=True,
        use_extra_bufts=True, note="",
    )  # fmt: skip
    assert "AMX, which this kernel does not allow" in explain(result.detail, amx_runtime)
    native = amx_runtime.model_copy(update={"variant": None, "amx": False, "portable": False})
    assert "scripts/install.sh" in explain(result.detail, native)


def installed_presets() -> list[str]:
    return list(models.PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset", installed_presets())
def test_long_prompt_runs_in_a_child_with_each_preset(preset: str) -> None:
    # A missing preset fails (ModelNotInstalledError): CI installs them all.
    path = models.resolve_model(preset)
    result = runtime.run_probe(path, variant="auto")
    if not result.ok:
        pytest.fail(f"{preset}: the self-test child failed\n{render(diagnose(preset, verify=False))}")
    measured = json.loads(result.detail)
    assert measured["prompt_tokens"] >= runtime.PROBE_TOKENS
    assert measured["prompt_tok_s"] > 0


def test_amx_is_used_only_where_a_real_prompt_survived_it() -> None:
    path = models.resolve_model("smollm2-135m")
    decided = runtime.decide(path)
    assert decided.portable and decided.variant is not None
    assert cpu_info().supports(decided.variant)
    if decided.amx:
        assert runtime.run_probe(path, variant="sapphirerapids").ok
    elif cpu_info().has_amx:
        # The AMX probe failed here: the variant chosen must not hold AMX code.
        assert not decided.build_has_amx
        assert not runtime.run_probe(path, variant="sapphirerapids").ok


def test_doctor_reports_and_self_tests() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mainrag", "doctor", "--model", "smollm2-135m", "--no-verify"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert cpu_info().model in text
    assert f"uses   {runtime.decide(models.resolve_model('smollm2-135m')).variant}" in text
    for name in models.PRESETS:
        assert name in text
    assert "512-token prompt" in text and "doctor: ok" in text
