"""The embedded default backend: a GGUF model run in-process by llama-cpp-python.

Design notes (why, not what):

* llama.cpp contexts are not thread-safe and hold one KV cache, so every call on
  a loaded model runs on that model's own single-thread executor. This keeps the
  event loop free, serialises access, and lets concurrent tasks share one model.
* Loaded models are cached per (file, n_ctx, n_threads) and reference-counted,
  so several judges on the same preset share one ``Llama`` and one KV cache.
* A judgement reads the next-token logits once, with no sampling. The KV cache
  of the longest common token prefix with the previous evaluation is kept, so
  judgements that share an instruction/question prefix only evaluate the rest.
  Prompts are evaluated in chunks cut at newlines (see ``_chunk_starts``)
  because llama.cpp's CPU kernels round differently for different batch
  splits: the chunks make a score a function of the prompt alone, identical
  with or without reuse and whatever ran before.
* OpenMP threads spin briefly, then sleep (see ``llamacpp_runtime.import_llama_cpp``):
  endless spinning made judgements several times slower whenever another
  process shared the cores; sleeping at once made decoding 35% slower.
* With ``logits_all=False`` llama-cpp-python 0.3.36 never copies logits into
  ``Llama.scores`` (it stays zeros), so we read the last position directly with
  ``llama_get_logits_ith(ctx, -1)`` right after ``eval``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from mainrag import models
from mainrag.backends import llamacpp_runtime
from mainrag.backends.base import Generation, Judgement, Message, Prompt
from mainrag.backends.llamacpp_batch import SequencePool, common_prefix
from mainrag.errors import BackendError, ConfigError
from mainrag.scoring import NO_VARIANTS, YES_VARIANTS, score_logits

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["NO_VARIANTS", "YES_VARIANTS", "LlamaCppBackend"]


# Smallest evaluation chunk: smaller chunks would reuse more of a shared
# prefix but make llama.cpp's batches less efficient.
_MIN_CHUNK = 32
# Shrinking a paragraph removes this many tokens more than the measured excess,
# because re-tokenising a cut text rarely gives exactly the same token count.
_TRUNCATION_SLACK = 8
_ELLIPSIS = " ... "
# Tokens kept at the end of a shortened paragraph (closing tags live there).
_KEPT_TAIL = 8

T = TypeVar("T")
_Key = tuple[Path, int, int]


def _default_threads() -> int:
    # llama-cpp-python defaults decode threads to cpu_count // 2 (1 on a
    # 2-core box); use every core we are allowed to run on instead.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------
# One loaded model, shared by every backend object that asks for the same key.
# --------------------------------------------------------------------------


@dataclass
class _LoadedModel:
    llm: Llama
    render: Callable[[list[dict[str, str]]], str]
    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]
    stop: list[str]
    executor: ThreadPoolExecutor
    refs: int = 0
    # Leading KV-cache tokens computed in canonical chunks (safe to reuse).
    canonical: int = 0
    anchors: dict[int, bool] = field(default_factory=dict)
    pool: SequencePool | None = None  # the batched path's context, made on first use

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())


_REGISTRY: dict[_Key, _LoadedModel] = {}
_REGISTRY_LOCK = threading.Lock()


def _acquire(path: Path, n_ctx: int, n_threads: int, seed: int, verbose: bool) -> _LoadedModel:
    key = (path.resolve(), n_ctx, n_threads)
    with _REGISTRY_LOCK:  # held while loading so two callers never load twice
        loaded = _REGISTRY.get(key)
        if loaded is None:
            loaded = _load(key[0], n_ctx, n_threads, seed, verbose)
            _REGISTRY[key] = loaded
        loaded.refs += 1
        return loaded


def _release(loaded: _LoadedModel) -> bool:
    """Drop one reference; True when the caller must free the model."""
    with _REGISTRY_LOCK:
        loaded.refs -= 1
        if loaded.refs > 0:
            return False
        for key, value in list(_REGISTRY.items()):
            if value is loaded:
                del _REGISTRY[key]
        return True


def _load(path: Path, n_ctx: int, n_threads: int, seed: int, verbose: bool) -> _LoadedModel:
    try:
        llm = llamacpp_runtime.load_llama(
            path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            seed=seed,
            logits_all=False,  # True would cost n_ctx x vocab x 4 bytes of RAM
            verbose=verbose,
        )
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"llama.cpp could not load {path}: {exc}") from exc
    try:
        render = _chat_renderer(llm, path)
        yes_ids = _single_token_ids(llm, YES_VARIANTS, path)
        no_ids = _single_token_ids(llm, NO_VARIANTS, path)
    except BaseException:
        llm.close()
        raise
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{path.stem}")
    return _LoadedModel(llm, render, yes_ids, no_ids, _stop_strings(llm), executor)


def _chat_renderer(llm: Llama, path: Path) -> Callable[[list[dict[str, str]]], str]:
    """The model's own chat template from GGUF metadata, with the generation prompt."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ConfigError(
            f"{path} has no tokenizer.chat_template in its GGUF metadata; "
            "the llamacpp backend needs an instruction-tuned model with a chat template"
        )
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llm, llm.token_eos()),
        bos_token=_token_text(llm, llm.token_bos()),
        add_generation_prompt=True,
    )
    return lambda messages: formatter(messages=messages).prompt  # type: ignore[arg-type]


def _token_text(llm: Llama, token: int) -> str:
    return "" if token < 0 else llm._model.token_get_text(token)


def _stop_strings(llm: Llama) -> list[str]:
    # create_completion already stops on every end-of-generation token
    # (llama_vocab_is_eog, e.g. <|im_end|>); the EOS text is a second guard
    # for templates whose turn end is not flagged as EOG.
    eos = _token_text(llm, llm.token_eos())
    return [eos] if eos else []


def _single_token_ids(llm: Llama, variants: Sequence[str], path: Path) -> tuple[int, ...]:
    """Ids of the variants that are one token, deduplicated, in variant order."""
    ids: list[int] = []
    for text in variants:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(tokens) == 1 and tokens[0] not in ids:
            ids.append(tokens[0])
    if not ids:
        raise ConfigError(f"{path}: none of {list(variants)} is a single token; cannot judge")
    return tuple(ids)


# --------------------------------------------------------------------------
# Blocking work, always run on the model's own executor thread.
# --------------------------------------------------------------------------


# Stand-ins for the message contents while the chat template renders:
# private-use characters that no template writes, around the message index.
_OPEN, _CLOSE = "\ue000", "\ue001"


def _tokenize_prompt(loaded: _LoadedModel, prompt: Prompt) -> list[int]:
    llm = loaded.llm

    def tokenize(text: str, *, special: bool) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special) if text else []

    # The template writes its own special tokens (and BOS where it wants one),
    # so its text is tokenized with specials parsed. Message contents hold
    # documents and model output: "<|im_end|>" there must stay plain text, so
    # the template renders placeholders and each content is tokenized apart
    # with special=False. A template that drops or repeats a message drops or
    # repeats its placeholder, so the result follows the template.
    text = loaded.render([{"role": m.role, "content": f"{_OPEN}{i}{_CLOSE}"} for i, m in enumerate(prompt)])
    head, *rest = text.split(_OPEN)
    tokens = tokenize(head, special=True)
    for part in rest:
        index, _, template_text = part.partition(_CLOSE)
        tokens += tokenize(prompt[int(index)].content, special=False)
        tokens += tokenize(template_text, special=True)
    # Add BOS only if the vocab asks for it and the template did not already
    # put it there.
    bos = llm.token_bos()
    if llm._model.add_bos_token() and bos >= 0 and tokens[:1] != [bos]:
        tokens.insert(0, bos)
    return tokens


def _fit_prompt(loaded: _LoadedModel, prompt: Prompt, budget: int) -> list[int]:
    """Tokens of ``prompt``, shortening its longest paragraph until they fit.

    The longest paragraph (split on blank lines) of the user messages is the
    retrieved document in every agent prompt, so cutting it keeps the
    question and the closing instruction intact. Each round empties at most
    one paragraph, so the loop ends after at most one round per paragraph.
    """
    tokens = _tokenize_prompt(loaded, prompt)
    rounds = 1 + sum(m.content.count("\n\n") + 1 for m in prompt)
    for _ in range(rounds):
        if len(tokens) <= budget:
            return tokens
        prompt = _shorten_longest_paragraph(loaded.llm, prompt, excess=len(tokens) - budget)
        tokens = _tokenize_prompt(loaded, prompt)
    if len(tokens) <= budget:
        return tokens
    # Last resort (the template or instruction alone overflows): keep the
    # tail, which holds the instruction and the generation prompt.
    return tokens[-budget:]


def _shorten_longest_paragraph(llm: Llama, prompt: Prompt, *, excess: int) -> Prompt:
    """Cut ``excess`` tokens (and a little slack) out of the longest paragraph.

    The cut is just before the paragraph's last few tokens, so a closing fence
    such as ``</document>`` survives; an ellipsis marks the gap.
    """
    i, j, para = max(_candidate_paragraphs(prompt), key=lambda c: len(c[2]))
    para_tokens = llm.tokenize(para.encode("utf-8"), add_bos=False, special=False)
    tail = min(_KEPT_TAIL, len(para_tokens) // 4)
    head = max(0, len(para_tokens) - tail - excess - _TRUNCATION_SLACK)
    if head == 0:
        cut = ""  # nothing worth keeping; a later round may shorten another paragraph
    else:
        cut = _decode(llm, para_tokens[:head]) + _ELLIPSIS + _decode(llm, para_tokens[len(para_tokens) - tail :])
    paragraphs = prompt[i].content.split("\n\n")
    paragraphs[j] = cut
    shortened = Message(role=prompt[i].role, content="\n\n".join(paragraphs))
    return prompt[:i] + (shortened,) + prompt[i + 1 :]


def _candidate_paragraphs(prompt: Prompt) -> list[tuple[int, int, str]]:
    """(message, paragraph, text) of every paragraph of the user messages."""
    users = [i for i, m in enumerate(prompt) if m.role == "user"] or list(range(len(prompt)))
    return [(i, j, p) for i in users for j, p in enumerate(prompt[i].content.split("\n\n"))]


def _decode(llm: Llama, tokens: Sequence[int]) -> str:
    # A cut may split a multi-byte character; drop the broken bytes.
    return llm.detokenize(list(tokens)).decode("utf-8", errors="ignore")


def _is_anchor(loaded: _LoadedModel, token: int) -> bool:
    """Whether a chunk may end after ``token``: it holds a newline."""
    anchor = loaded.anchors.get(token)
    if anchor is None:
        anchor = b"\n" in loaded.llm.detokenize([token], special=True)
        loaded.anchors[token] = anchor
    return anchor


def _chunk_starts(loaded: _LoadedModel, tokens: Sequence[int]) -> list[int]:
    """Where evaluation chunks start: 0, then after a newline token once a
    chunk holds at least ``_MIN_CHUNK`` tokens, but not in the last
    ``_MIN_CHUNK`` tokens (a tiny last chunk costs a decode call and no reuse).

    Whether a cut exists at position p depends only on the tokens before p
    (the tail rule only drops cuts, and never below a cut we reuse), so two
    prompts sharing a prefix share its cuts: a cached chunk was computed
    exactly as a fresh evaluation of the new prompt would compute it.
    """
    starts = [0]
    for i in range(len(tokens) - _MIN_CHUNK):
        if i + 1 - starts[-1] >= _MIN_CHUNK and _is_anchor(loaded, tokens[i]):
            starts.append(i + 1)
    return starts


def _eval_reusing_prefix(loaded: _LoadedModel, tokens: list[int], *, reuse: bool) -> None:
    """Evaluate ``tokens`` chunk by chunk, keeping the cached chunks of the
    longest common prefix with what the KV cache holds.

    Why chunks: llama.cpp's CPU kernels give results that depend on how a
    batch is split (0.01-0.1 in log-odds for Qwen Q4_K_M), so keeping an
    arbitrary prefix and evaluating the rest would make a judgement depend on
    the previous prompt. Evaluating every prompt in the same prefix-determined
    chunks makes it a pure function of its tokens, with or without reuse.
    At least the last chunk is always evaluated, so the logits read next
    belong to this prompt.
    """
    llm = loaded.llm
    starts = _chunk_starts(loaded, tokens)
    limit = 0
    if reuse:
        cached = llm.input_ids[: llm.n_tokens].tolist()
        limit = min(common_prefix(cached, tokens), loaded.canonical, len(tokens) - 1)
    keep = max(s for s in starts if s <= limit)
    # Llama.eval() removes KV cells from n_tokens onwards before decoding, so
    # moving n_tokens back is all the truncation needed.
    llm.n_tokens = keep
    loaded.canonical = keep  # valid even if a chunk below fails
    bounds = [s for s in starts if s > keep]
    for begin, end in zip([keep, *bounds], [*bounds, len(tokens)]):
        llm.eval(tokens[begin:end])
    loaded.canonical = starts[-1]


def _last_logits(llm: Llama) -> NDArray[np.float64]:
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    if not ptr:
        raise BackendError("llama.cpp returned no logits for the last position")
    # Copy: the buffer is overwritten by the next decode.
    logits: NDArray[np.float64] = np.array(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)), dtype=np.float64)
    return logits


def _judge_sync(loaded: _LoadedModel, prompt: Prompt, reuse: bool) -> Judgement:
    tokens = _fit_prompt(loaded, prompt, budget=loaded.n_ctx)
    _eval_reusing_prefix(loaded, tokens, reuse=reuse)
    return _judgement(loaded, _last_logits(loaded.llm), len(tokens), None)


def _judgement(loaded: _LoadedModel, logits: NDArray[Any], prompt_tokens: int, evaluated: int | None) -> Judgement:
    score = score_logits(np.asarray(logits, dtype=np.float64), loaded.yes_ids, loaded.no_ids)
    lp_yes, lp_no = score.logprob_yes, score.logprob_no
    if not (np.isfinite(lp_yes) and np.isfinite(lp_no)):
        raise BackendError(f"llama.cpp returned non-finite logits (log P(Yes)={lp_yes}, log P(No)={lp_no})")
    return Judgement(
        log_odds=lp_yes - lp_no,
        logprob_yes=lp_yes,
        logprob_no=lp_no,
        censored=False,
        prompt_tokens=prompt_tokens,
        evaluated_tokens=evaluated,
    )


def _generate_sync(loaded: _LoadedModel, prompt: Prompt, max_tokens: int, reuse: bool) -> Generation:
    llm = loaded.llm
    # Leave room for the answer, but never let a huge max_tokens squeeze the
    # prompt below half the context.
    reserve = min(max_tokens, loaded.n_ctx // 2)
    tokens = _fit_prompt(loaded, prompt, budget=loaded.n_ctx - reserve - 1)
    # Evaluate the prompt our way first (same chunks as a judgement, so the
    # greedy answer does not depend on earlier prompts). create_completion
    # then finds the whole prompt cached with live logits and samples at once;
    # given a token list it adds no BOS/EOS.
    _eval_reusing_prefix(loaded, tokens, reuse=reuse)
    out: Any = llm.create_completion(
        tokens,
        max_tokens=max_tokens,
        temperature=0.0,
        repeat_penalty=1.0,
        stop=loaded.stop,
    )
    usage = out["usage"]
    return Generation(
        text=out["choices"][0]["text"].strip(),
        prompt_tokens=int(usage["prompt_tokens"]),
        completion_tokens=int(usage["completion_tokens"]),
    )


def _pool(loaded: _LoadedModel, n_kv: int) -> SequencePool:
    if loaded.pool is None:
        n_threads = int(loaded.llm.context_params.n_threads)
        loaded.pool = SequencePool(loaded.llm, n_kv=max(n_kv, 2 * loaded.n_ctx), n_threads=n_threads)
    return loaded.pool


def _judge_many_sync(loaded: _LoadedModel, prompts: Sequence[Prompt], n_kv: int) -> list[Judgement]:
    tokens = [_fit_prompt(loaded, p, budget=loaded.n_ctx) for p in prompts]
    done = _pool(loaded, n_kv).evaluate(tokens)
    return [_judgement(loaded, d.logits, len(t), d.evaluated) for d, t in zip(done, tokens, strict=True)]


def _generate_many_sync(
    loaded: _LoadedModel, prompts: Sequence[Prompt], max_tokens: int, n_kv: int
) -> list[Generation]:
    llm = loaded.llm
    reserve = min(max_tokens, loaded.n_ctx // 2)
    tokens = [_fit_prompt(loaded, p, budget=loaded.n_ctx - reserve - 1) for p in prompts]
    vocab = llm._model.vocab
    lib = llamacpp_runtime.import_llama_cpp()
    outs = _pool(loaded, n_kv).generate(
        tokens,
        max_tokens=max_tokens,
        is_eog=lambda t: bool(lib.llama_vocab_is_eog(vocab, t)),
        stopped=lambda toks: any(s in _decode(llm, toks) for s in loaded.stop),
    )
    return [
        Generation(
            text=_answer_text(loaded, o.tokens),
            prompt_tokens=o.prompt_tokens,
            completion_tokens=len(o.tokens),
            evaluated_tokens=o.evaluated,
        )
        for o in outs
    ]


def _answer_text(loaded: _LoadedModel, tokens: list[int]) -> str:
    text = _decode(loaded.llm, tokens)
    for stop in loaded.stop:
        text = text.split(stop, 1)[0]
    return text.strip()


def _clear_sync(loaded: _LoadedModel) -> None:
    if loaded.pool is not None:
        loaded.pool.clear()
    loaded.llm.n_tokens = loaded.canonical = 0  # and the one-at-a-time context's reuse


def _close_sync(loaded: _LoadedModel) -> None:
    if loaded.pool is not None:
        loaded.pool.close()
    loaded.llm.close()


# --------------------------------------------------------------------------
# The public backend.
# --------------------------------------------------------------------------


class LlamaCppBackend:
    """Run a GGUF chat model in-process with llama.cpp.

    ``model`` is a preset name (see :mod:`mainrag.models`) or a ``.gguf``
    path. The model loads in the constructor (0.3-3 s for the presets), so a
    missing file or a model without a chat template fails right away.
    ``n_threads`` defaults to every core this process may use. Objects with
    the same file, ``n_ctx`` and ``n_threads`` share one loaded model (``seed``
    and ``verbose`` of the first one win); the last ``aclose()`` frees it, and
    a model never closed stays loaded until the process ends.
    ``prefix_reuse=False`` re-evaluates every prompt from scratch (for
    measurements and checks; the scores are identical).
    """

    def __init__(
        self,
        model: str = models.DEFAULT_MODEL,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        seed: int = 0,
        verbose: bool = False,
        prefix_reuse: bool = True,
        n_kv: int = 32768,
    ) -> None:
        path = models.resolve_model(model)
        self._n_kv = n_kv
        self._label = model if model in models.PRESETS else path.stem
        self._reuse = prefix_reuse
        # Loaded on first use, not here: a retriever or chain can be built (at import, in a
        # config) without loading weights; the path is checked now, so a typo fails early.
        self._args = (path, n_ctx, n_threads or _default_threads(), seed, verbose)
        self._loaded: _LoadedModel | None = None
        self._closed = False
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (they load at the first call)."""
        return self._loaded is not None

    @property
    def name(self) -> str:
        return f"llamacpp:{self._label}"

    @property
    def n_ctx(self) -> int:
        return self._model().n_ctx

    async def judge(self, prompt: Prompt) -> Judgement:
        loaded = self._model()
        return await self._run(loaded, _judge_sync, loaded, prompt, self._reuse)

    async def generate(self, prompt: Prompt, *, max_tokens: int) -> Generation:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        loaded = self._model()
        return await self._run(loaded, _generate_sync, loaded, prompt, max_tokens, self._reuse)

    async def judge_many(self, prompts: Sequence[Prompt]) -> list[Judgement | BaseException]:
        """Judge all prompts together in the batch context (see llamacpp_batch)."""
        if not prompts:
            return []
        loaded = self._model()
        return list(await self._run(loaded, _judge_many_sync, loaded, list(prompts), self._n_kv))

    async def generate_many(self, prompts: Sequence[Prompt], *, max_tokens: int) -> list[Generation | BaseException]:
        """Greedy answers to all prompts, decoded together (see llamacpp_batch)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if not prompts:
            return []
        loaded = self._model()
        return list(await self._run(loaded, _generate_many_sync, loaded, list(prompts), max_tokens, self._n_kv))

    async def clear_cache(self) -> None:
        """Forget every sequence the batch context holds (for measurements:
        the next call then reuses nothing from earlier ones)."""
        loaded = self._model()
        await self._run(loaded, _clear_sync, loaded)

    async def aclose(self) -> None:
        with self._load_lock:
            self._closed = True
            loaded, self._loaded = self._loaded, None
        if loaded is None or not _release(loaded):
            return
        # Free on the model's own thread, after every job already queued.
        await asyncio.get_running_loop().run_in_executor(loaded.executor, _close_sync, loaded)
        loaded.executor.shutdown(wait=False)

    def _model(self) -> _LoadedModel:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._load_lock:  # one load however many tasks or threads ask at once
            if self._closed:
                raise BackendError(f"{self.name} is closed")
            if self._loaded is None:
                self._loaded = _acquire(*self._args)
            return self._loaded

    @staticmethod
    async def _run(loaded: _LoadedModel, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(loaded.executor, fn, *args)
        except (RuntimeError, ValueError) as exc:
            # llama_decode failures, llama-cpp-python's own checks and a
            # shut-down executor all surface here.
            raise BackendError(f"llama.cpp failed: {exc}") from exc

    def __repr__(self) -> str:
        return f"LlamaCppBackend({self.name!r})"
