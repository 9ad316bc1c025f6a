"""Load llama.cpp on the CPU code this host may run, decided at run time.

Why: a llama.cpp build is only as portable as its compiler flags, and the
build host is not always the run host (pip caches wheels, machines change).
``scripts/install.sh`` builds llama-cpp-python with ``GGML_BACKEND_DL`` and
every CPU variant as its own library; before the first model loads,
:func:`prepare` loads the variant that :mod:`llamacpp_cpu` picks from the
kernel's CPU flags.

AMX needs more than its flag: on some hosts the kernel grants AMX permission
and ggml's AMX kernels still die with SIGILL on the first prompt batch. So AMX
(the ``sapphirerapids`` variant, or a native build's AMX buffer type) is used
only after a child process (:mod:`llamacpp_probe`) evaluated a real prompt
with it; the verdict is cached per host, build and model. A plain
``pip install`` (a native build, one ``libggml-cpu``) is handled too: its
extra buffer types are switched off when its AMX kernels fail the probe.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mainrag.backends.llamacpp_cpu import AMX, VARIANTS, best_variant, cpu_info
from mainrag.errors import BackendError, ConfigError
from mainrag.files import write_atomic

if TYPE_CHECKING:
    from llama_cpp import Llama

# A prompt batch this long goes through ggml's matrix kernels (AMX included).
PROBE_TOKENS = 512
_PROBE_TIMEOUT_S = 300.0


class Runtime(BaseModel):
    """What :func:`prepare` chose, for the backend and for ``mainrag doctor``."""

    lib_dir: str
    portable: bool  # a GGML_BACKEND_DL build with per-CPU variants
    variant: str | None  # the variant loaded (None: a single native libggml-cpu)
    build_has_amx: bool  # the code chosen contains ggml's AMX kernels
    amx: bool  # AMX is used (the CPU has it and the probe passed)
    use_extra_bufts: bool  # llama_model_params.use_extra_bufts for every load
    note: str  # why, in one sentence


def _install_hint() -> str:
    return "pip install 'mainrag[local]'  (compiles llama-cpp-python==0.3.36, ~7 min on 2 cores)"


def import_llama_cpp() -> Any:
    if "llama_cpp" not in sys.modules:
        # llama.cpp's OpenMP runtime (libgomp) reads these once, when loaded.
        # ggml syncs its threads after every op; a short spin before sleeping
        # (3000 turns, microseconds) decodes the 0.5B at 25.6 tok/s on 2 idle
        # cores against 16.6 with PASSIVE (sleep at once), and costs 15% when
        # another process shares the cores (11.2 against 13.1); an endless
        # spin (ACTIVE alone) made judgements several times slower under load.
        # Measured by benchmarks/cpu_variants.py' probe; a user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
        os.environ.setdefault("GOMP_SPINCOUNT", "3000")
    try:
        import llama_cpp
    except ImportError as exc:  # the optional extra is missing
        raise ConfigError(f"the llamacpp backend needs llama-cpp-python: {_install_hint()}") from exc
    return llama_cpp


def lib_dir() -> Path:
    """llama-cpp-python's library folder, found without loading it."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")  # llama-cpp-python's own override
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ConfigError(f"the llamacpp backend needs llama-cpp-python: {_install_hint()}")
    return Path(spec.origin).parent / "lib"


def available_variants(directory: Path) -> set[str]:
    names = {p.name.removeprefix("libggml-cpu-").split(".")[0] for p in directory.glob("libggml-cpu-*.so")}
    return names & set(VARIANTS)


def _native_has_amx(directory: Path) -> bool:
    # The AMX kernels register a buffer type named "AMX"; a native build
    # compiled on an AMX host has it in libggml-cpu.
    lib = directory / "libggml-cpu.so"
    return lib.is_file() and b"AMX" in lib.read_bytes()


_LOCK = threading.Lock()
_RUNTIME: Runtime | None = None


def prepare(model_path: Path | None = None) -> Runtime:
    """Load the right CPU code once per process (before any model) and say
    whether models may use llama.cpp's extra buffer types. ``model_path`` is
    the model the AMX probe runs, where AMX is in question."""
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is None:
            import_llama_cpp()  # first, so its OpenMP settings apply
            _RUNTIME = decide(model_path)
            if _RUNTIME.variant is not None:
                _load_variant(Path(_RUNTIME.lib_dir), _RUNTIME.variant)
        return _RUNTIME


def force(variant: str | None, *, use_extra_bufts: bool) -> Runtime:
    """Use exactly this variant (None: the native library) in this process:
    for probes and speed measurements, before any model loads."""
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is not None:
            raise BackendError("the llama.cpp CPU backend is already chosen in this process")
        import_llama_cpp()
        directory = lib_dir()
        has_amx = set(AMX) <= set(VARIANTS[variant]) if variant else _native_has_amx(directory)
        _RUNTIME = Runtime(
            lib_dir=str(directory),
            portable=variant is not None,
            variant=variant,
            build_has_amx=has_amx,
            amx=has_amx and use_extra_bufts,
            use_extra_bufts=use_extra_bufts,
            note="forced",
        )
        if variant is not None:
            _load_variant(directory, variant)
        return _RUNTIME


def decide(model_path: Path | None) -> Runtime:
    directory, cpu = lib_dir(), cpu_info()
    variants = available_variants(directory)
    portable = bool(variants)
    build_has_amx = cpu.has_amx and ("sapphirerapids" in variants if portable else _native_has_amx(directory))
    amx_ok = build_has_amx and model_path is not None and amx_probe(model_path)
    common = {"lib_dir": str(directory), "portable": portable, "amx": amx_ok}
    if portable:
        variant = best_variant(cpu, variants, amx_ok=amx_ok)
        note = f"portable build: the {variant} variant, chosen from /proc/cpuinfo"
        if build_has_amx and not amx_ok:
            note += "; AMX left out: " + ("its probe failed on this host" if model_path else "no model to probe")
        has_amx = set(AMX) <= set(VARIANTS[variant])
        # Weight repacking (an extra buffer type) is slower where ggml's plain
        # kernels have AVX-512 VNNI: 1.5B prompts at 101 tok/s with it, 144
        # without (decode 9.9 against 8.9; benchmarks/RESULTS.md). AMX needs it.
        bufts = amx_ok or "avx512_vnni" not in VARIANTS[variant]
        note += "" if bufts else "; weight repacking off (slower than the AVX-512 VNNI kernels)"
        return Runtime(**common, variant=variant, build_has_amx=has_amx, use_extra_bufts=bufts, note=note)
    if build_has_amx and not amx_ok:
        note = (
            "native build whose AMX kernels fail on this host: extra buffer types off "
            "(scripts/install.sh installs the portable build)"
        )
        return Runtime(**common, variant=None, build_has_amx=True, use_extra_bufts=False, note=note)
    note = "native build: runs only on CPUs like the build host's (scripts/install.sh installs the portable build)"
    return Runtime(**common, variant=None, build_has_amx=build_has_amx, use_extra_bufts=True, note=note)


def _load_variant(directory: Path, variant: str) -> None:
    # Through libllama's own handle: dlsym then finds the libggml that libllama
    # linked. A CDLL of libggml.so would map a second copy (the wheel holds
    # copies, not links), and llama.cpp would see no backend loaded.
    load = import_llama_cpp().llama_cpp._lib.ggml_backend_load
    load.restype = ctypes.c_void_p
    load.argtypes = [ctypes.c_char_p]
    path = directory / f"libggml-cpu-{variant}.so"
    if not load(str(path).encode()):
        raise BackendError(f"llama.cpp could not load its CPU backend {path}; run `mainrag doctor`")


# --------------------------------------------------------------------------
# The AMX probe: a real prompt in a child process, verdict cached.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # the child's JSON line, or how it died


def run_probe(
    model_path: Path,
    *,
    variant: str = "auto",
    extra_bufts: bool = True,
    judge: bool = False,
    decode: int = 0,
    threads: int | None = None,
    timeout: float = _PROBE_TIMEOUT_S,
) -> ProbeResult:
    """Evaluate a ``PROBE_TOKENS`` prompt (then ``decode`` tokens and, with
    ``judge``, one judgement) in a child process on ``variant`` ("auto": the
    backend's own choice; "native": a single libggml-cpu). A crash there
    becomes a result, not a dead caller."""
    cmd = [sys.executable, "-m", "mainrag.backends.llamacpp_probe", str(model_path), "--variant", variant]
    cmd += [] if extra_bufts else ["--no-extra-bufts"]
    cmd += ["--judge"] if judge else []
    cmd += ["--decode", str(decode)] if decode else []
    cmd += ["--threads", str(threads)] if threads else []
    return run_child(cmd, timeout=timeout)


def run_child(cmd: list[str], *, timeout: float) -> ProbeResult:
    """Run ``cmd``; its last stdout line on success, else how it ended."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"timed out after {timeout:.0f} s")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return ProbeResult(True, lines[-1])
    return ProbeResult(False, describe_exit(proc.returncode, proc.stderr))


def describe_exit(returncode: int, stderr: str) -> str:
    if returncode < 0:
        import signal

        name = signal.Signals(-returncode).name
        why = " (an instruction this CPU or kernel does not allow)" if name == "SIGILL" else ""
        return f"killed by {name}{why}"
    tail = stderr.strip().splitlines()[-1:] or [""]
    return f"exit code {returncode}: {tail[0]}"


def probe_cache() -> Path:
    from mainrag.models import cache_dir

    return cache_dir().parent / "cpu-probes.json"


def _probe_key(model_path: Path) -> str:
    cpu, lib = cpu_info(), lib_dir()
    libs = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in lib.glob("libggml*.so"))
    stat = model_path.stat()
    raw = json.dumps([cpu.model, sorted(cpu.flags), cpu.kernel, str(lib), libs, str(model_path), stat.st_size])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def amx_probe(model_path: Path) -> bool:
    """Whether ggml's AMX kernels survive a real prompt on this host (cached)."""
    cache_file, key = probe_cache(), _probe_key(model_path)
    try:
        verdicts = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if key not in verdicts:
        variant = "sapphirerapids" if available_variants(lib_dir()) else "native"
        result = run_probe(model_path, variant=variant, extra_bufts=True)
        verdicts[key] = {"ok": result.ok, "detail": result.detail, "cpu": cpu_info().model}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file, json.dumps(verdicts, indent=1))
    return bool(verdicts[key]["ok"])


# --------------------------------------------------------------------------
# Loading a model with the chosen code and buffer types.
# --------------------------------------------------------------------------


def load_llama(model_path: Path, **kwargs: Any) -> Llama:
    """``llama_cpp.Llama(model_path, **kwargs)`` on the CPU code :func:`prepare`
    chose, with ``use_extra_bufts`` set as it decided.

    llama-cpp-python 0.3.36 has no argument for ``use_extra_bufts``: its
    constructor takes ``llama_model_default_params()`` and loads at once, so
    the defaults are wrapped for the length of this call (under a lock).
    """
    runtime = prepare(model_path)
    llama_cpp = import_llama_cpp()
    low = llama_cpp.llama_cpp

    defaults = low.llama_model_default_params

    def params() -> Any:
        p = defaults()
        p.use_extra_bufts = runtime.use_extra_bufts
        return p

    with _LOAD_LOCK:
        low.llama_model_default_params = params
        try:
            return llama_cpp.Llama(model_path=str(model_path), **kwargs)
        finally:
            low.llama_model_default_params = defaults


_LOAD_LOCK = threading.Lock()
