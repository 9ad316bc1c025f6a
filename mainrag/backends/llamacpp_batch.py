"""Many prompts in one llama.cpp context: the batched path of the embedded
backend (``LlamaCppBackend.generate_many`` / ``judge_many``).

On a CPU the limit is reading each candidate's tokens once; this gets close:

* one context holds many sequences in a unified KV cache, and every prompt
  of a call is evaluated in the same large batches (matrix kernels, not
  one prompt after another);
* a sequence is kept after its call, and a new prompt starts from the cached
  sequence it shares the longest token prefix with: ``llama_memory_seq_cp``
  tags the same KV cells with the new sequence, so the shared part costs
  nothing. A Judge that continues the Predictor's conversation reads only its
  question; prompts that share a system prompt and question share those;
* the prefix all prompts of a call share is evaluated once for all of them;
* the Predictor's answers are decoded together: one decode step advances every
  unfinished answer.

Scores differ from the one-at-a-time path (``llamacpp._eval_reusing_prefix``)
only by llama.cpp's rounding for other batch splits (tests/test_llamacpp_batch.py
measures the tolerance). Everything here runs on the model's executor thread.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from mainrag.backends.llamacpp_runtime import import_llama_cpp
from mainrag.errors import BackendError

if TYPE_CHECKING:
    from llama_cpp import Llama

# A shared prefix shorter than this is not worth its own evaluation step.
_MIN_SHARED = 16


@dataclass
class Evaluated:
    """One prompt after :meth:`SequencePool.evaluate`."""

    seq: int
    logits: NDArray[np.float32]  # next-token logits after the prompt
    evaluated: int  # tokens of this prompt actually computed (reuse excluded)


@dataclass
class Generated:
    tokens: list[int]
    prompt_tokens: int
    evaluated: int  # prompt tokens computed + answer tokens fed back


@dataclass
class _Work:
    seq: int
    tokens: Sequence[int]
    start: int  # first position to compute
    logits: NDArray[np.float32] | None = None


@dataclass
class _Cached:
    tokens: list[int]
    used: int  # tick of the last call that used it


@dataclass
class SequencePool:
    """Sequences of one model in one llama.cpp context (unified KV cache)."""

    llm: Llama
    n_kv: int  # KV cells shared by all sequences
    n_threads: int
    n_batch: int = 512
    _lib: Any = field(init=False, repr=False)
    _ctx: Any = field(init=False, repr=False)
    _mem: Any = field(init=False, repr=False)
    _batch: Any = field(init=False, repr=False)
    _cached: dict[int, _Cached] = field(default_factory=dict, init=False)
    _tick: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        lib = self._lib = import_llama_cpp()
        # At most one output per token of a batch (llama.cpp asserts it).
        self.n_seq = min(256, int(lib.llama_max_parallel_sequences()), self.n_batch)
        params = lib.llama_context_default_params()
        params.n_ctx = self.n_kv
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = self.n_seq
        params.kv_unified = True  # sequences share cells: seq_cp is free
        params.n_threads = params.n_threads_batch = self.n_threads
        # Flash attention skips the cells other sequences hold (masked out),
        # so a token's attention costs its own sequence, not the whole cache.
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(self.llm._model.model, params)
        if not self._ctx:
            raise BackendError(f"llama.cpp could not create a batch context of {self.n_kv} KV cells")
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._vocab = self.llm.n_vocab()

    def clear(self) -> None:
        for seq in list(self._cached):
            self._drop(seq)

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    # -- evaluation ---------------------------------------------------------

    def evaluate(self, prompts: Sequence[Sequence[int]]) -> list[Evaluated]:
        """Each prompt in its own new sequence, reusing cached prefixes;
        the logits after each prompt's last token."""
        if any(len(p) == 0 for p in prompts):
            raise BackendError("cannot evaluate an empty prompt")
        if any(len(p) > self.n_kv // 2 for p in prompts):
            raise BackendError(f"a prompt exceeds half the batch context ({self.n_kv} KV cells)")
        self._tick += 1
        need = sum(len(p) for p in prompts)
        if need > self.n_kv * 3 // 4 and len(prompts) > 1:  # too big for one go: halves
            half = len(prompts) // 2
            return self.evaluate(prompts[:half]) + self.evaluate(prompts[half:])
        sources = [self._best_source(p) for p in prompts]
        protected = {s for s, _ in sources if s is not None}
        self._make_room(need, len(prompts) + 1, protected)
        sources, shared = self._share_prefix(prompts, sources)
        work = []
        for prompt, (src, reuse) in zip(prompts, sources, strict=True):
            seq = self._new_seq()
            if src is not None and reuse:
                self._lib.llama_memory_seq_cp(self._mem, src, seq, 0, reuse)
            work.append(_Work(seq, prompt, reuse))
            self._cached[seq] = _Cached(list(prompt), self._tick)
        if shared is not None:
            self._drop(shared[0])
        self._run(work)
        results = [Evaluated(w.seq, w.logits, len(w.tokens) - w.start) for w in work]  # type: ignore[arg-type]
        if shared is not None:
            results[0].evaluated += shared[1]
        return results

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        is_eog: Callable[[int], bool],
        stopped: Callable[[list[int]], bool],
    ) -> list[Generated]:
        """Greedy answers to every prompt, decoded together."""
        firsts = self.evaluate(prompts)
        outs: list[list[int]] = [[] for _ in prompts]
        counts = [e.evaluated for e in firsts]
        nxt = {i: int(e.logits.argmax()) for i, e in enumerate(firsts)}
        while nxt:
            feed = []
            for i, token in list(nxt.items()):
                del nxt[i]
                if is_eog(token):
                    continue
                outs[i].append(token)
                if len(outs[i]) >= max_tokens or stopped(outs[i]):
                    continue
                seq = firsts[i].seq
                pos = len(prompts[i]) + len(outs[i]) - 1
                feed.append((i, _Work(seq, [token], 0), pos))
            if not feed:
                break
            self._step([(w, pos) for _, w, pos in feed])
            for i, w, _ in feed:
                self._cached[w.seq].tokens.append(w.tokens[0])
                counts[i] += 1
                nxt[i] = int(w.logits.argmax())  # type: ignore[union-attr]
        return [Generated(o, len(p), c) for o, p, c in zip(outs, prompts, counts, strict=True)]

    # -- sequences ----------------------------------------------------------

    def _best_source(self, prompt: Sequence[int]) -> tuple[int | None, int]:
        best: tuple[int | None, int] = (None, 0)
        for seq, cached in self._cached.items():
            n = common_prefix(cached.tokens, prompt)
            if n > best[1]:
                best = (seq, n)
        # At least the last token is computed, so its logits are this prompt's.
        return best[0], min(best[1], len(prompt) - 1)

    def _share_prefix(
        self, prompts: Sequence[Sequence[int]], sources: list[tuple[int | None, int]]
    ) -> tuple[list[tuple[int | None, int]], tuple[int, int] | None]:
        """Evaluate the prefix all prompts share once, if the cache lacks it."""
        if len(prompts) < 2:
            return sources, None
        shared = min(len(p) - 1 for p in prompts)
        for p in prompts[1:]:
            shared = min(shared, common_prefix(prompts[0], p))
        if shared - min(r for _, r in sources) < _MIN_SHARED:
            return sources, None
        src, reuse = sources[0]
        reuse = min(reuse, shared)
        seq = self._new_seq()
        if src is not None and reuse:
            self._lib.llama_memory_seq_cp(self._mem, src, seq, 0, reuse)
        work = _Work(seq, prompts[0][:shared], reuse)
        self._cached[seq] = _Cached(list(prompts[0][:shared]), self._tick)
        self._run([work], want_logits=False)
        better = [(s, r) if r >= shared else (seq, shared) for s, r in sources]
        return better, (seq, shared - reuse)

    def _new_seq(self) -> int:
        free = next((s for s in range(self.n_seq) if s not in self._cached), None)
        if free is None:
            self._evict(set())
            free = next(s for s in range(self.n_seq) if s not in self._cached)
        self._cached[free] = _Cached([], self._tick)
        return free

    def _make_room(self, need: int, seqs: int, protected: set[int]) -> None:
        """Drop least recently used sequences until ``need`` cells and
        ``seqs`` ids are free (cells counted without sharing: an upper bound)."""
        while self._cached and (
            sum(len(c.tokens) for c in self._cached.values()) + need > self.n_kv
            or self.n_seq - len(self._cached) < seqs
        ):
            if not self._evict(protected):
                break

    def _evict(self, protected: set[int]) -> bool:
        victims = [s for s in self._cached if s not in protected]
        if not victims:
            return False
        self._drop(min(victims, key=lambda s: self._cached[s].used))
        return True

    def _drop(self, seq: int) -> None:
        self._lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._cached.pop(seq, None)

    # -- llama_decode -------------------------------------------------------

    def _run(self, work: list[_Work], *, want_logits: bool = True) -> None:
        """Compute every work item's tokens from ``start``, packed into
        batches of ``n_batch`` tokens, sequence after sequence."""
        pending: list[tuple[_Work, int, int, bool]] = []  # work, position, token, logits
        for w in work:
            last = len(w.tokens) - 1
            pending += [(w, p, w.tokens[p], want_logits and p == last) for p in range(w.start, len(w.tokens))]
        for begin in range(0, len(pending), self.n_batch):
            self._decode(pending[begin : begin + self.n_batch])

    def _step(self, items: list[tuple[_Work, int]]) -> None:
        """One token for each of several sequences, with logits."""
        for begin in range(0, len(items), self.n_batch):
            chunk = items[begin : begin + self.n_batch]
            self._decode([(w, pos, w.tokens[0], True) for w, pos in chunk])

    def _decode(self, entries: list[tuple[_Work, int, int, bool]]) -> None:
        b = self._batch
        b.n_tokens = len(entries)
        for i, (w, pos, token, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = w.seq
            b.logits[i] = logits
        rc = self._lib.llama_decode(self._ctx, b)
        while rc == 1 and self._evict({w.seq for w, *_ in entries}):  # no KV slot: free some, retry
            rc = self._lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise BackendError(f"llama_decode failed ({rc}) on a batch of {len(entries)} tokens; n_kv={self.n_kv}")
        for i, (w, _, _, logits) in enumerate(entries):
            if logits:
                ptr = self._lib.llama_get_logits_ith(self._ctx, i)
                w.logits = np.ctypeslib.as_array(
                    ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self._vocab,)
                ).copy()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
