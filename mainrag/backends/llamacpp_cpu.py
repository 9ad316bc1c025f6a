"""What this CPU can run, as the kernel reports it, and which of ggml's CPU
variants fits it best. Pure facts: nothing here loads llama.cpp.

The kernel lists in ``/proc/cpuinfo`` only the features it enabled, so these
flags, not the compiler's guess at build time, decide what code may run.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from mainrag.errors import BackendError

# /proc/cpuinfo flags of each ggml CPU variant (ggml/src/CMakeLists.txt, in its
# order). ggml's "AVX512" compiles with F, CD, VL, DQ and BW.
_HASWELL = ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2")
_SKYLAKEX = (*_HASWELL, "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
AMX = ("amx_tile", "amx_int8")
VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("sse4_2",),
    "sandybridge": ("sse4_2", "avx"),
    "ivybridge": ("sse4_2", "avx", "f16c"),
    "piledriver": ("sse4_2", "avx", "f16c", "fma"),
    "haswell": _HASWELL,
    "skylakex": _SKYLAKEX,
    "cannonlake": (*_SKYLAKEX, "avx512vbmi"),
    "cascadelake": (*_SKYLAKEX, "avx512_vnni"),
    "icelake": (*_SKYLAKEX, "avx512vbmi", "avx512_vnni"),
    "cooperlake": (*_SKYLAKEX, "avx512_vnni", "avx512_bf16"),
    "zen4": (*_SKYLAKEX, "avx512vbmi", "avx512_vnni", "avx512_bf16"),
    "alderlake": (*_HASWELL, "avx_vnni"),
    "sapphirerapids": (*_SKYLAKEX, "avx512vbmi", "avx512_vnni", "avx512_bf16", *AMX),
}
# The flags `mainrag doctor` shows.
RELEVANT_FLAGS = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
    "avx512vbmi", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


class CpuInfo(BaseModel):
    model: str
    flags: frozenset[str]
    kernel: str

    def supports(self, variant: str) -> bool:
        return set(VARIANTS[variant]) <= self.flags

    @property
    def has_amx(self) -> bool:
        return set(AMX) <= self.flags


@cache
def cpu_info() -> CpuInfo:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> CpuInfo:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model, flags=flags, kernel=platform.release())


def best_variant(cpu: CpuInfo, available: set[str], *, amx_ok: bool) -> str:
    """The available variant with the most features, all of them on this CPU."""
    usable = [v for v in VARIANTS if v in available and cpu.supports(v) and (amx_ok or not set(AMX) & set(VARIANTS[v]))]
    if not usable:
        raise BackendError(
            f"no llama.cpp CPU variant in this build runs on {cpu.model}: "
            f"built {sorted(available)}; reinstall with scripts/install.sh"
        )
    return max(usable, key=lambda v: len(VARIANTS[v]))
