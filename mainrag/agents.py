"""The three MAIN-RAG agents. Each renders its prompts and asks its backend,
all of a query's prompts of one kind at once (see ``backends.base.generate_all``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mainrag.backends.base import Backend, Generation, Judgement, Message, Prompt, generate_all, judge_all
from mainrag.documents import Document
from mainrag.errors import ConfigError, MainRAGError
from mainrag.prompts import PromptTemplate, fence, fenced_documents, load_template, share_budget

if TYPE_CHECKING:
    from mainrag.config import Settings

Answer = str | BaseException | None  # the Predictor's answer, its failure, or none (judge-only)


class Predictor:
    """Agent-1: answers the question from one document alone."""

    def __init__(self, backend: Backend, template: PromptTemplate, *, max_tokens: int, max_doc_chars: int):
        self.backend, self.template = backend, template
        self.max_tokens, self.max_doc_chars = max_tokens, max_doc_chars

    @classmethod
    def from_settings(cls, s: Settings, backend: Backend) -> Predictor:
        return cls(backend, load_template(s.predictor_prompt), max_tokens=s.answer_max_tokens,
                   max_doc_chars=s.max_doc_chars)

    def prompt(self, question: str, doc: Document) -> Prompt:
        return self.template.render(document=fence(doc.content, self.max_doc_chars), question=question)

    async def predict(self, question: str, doc: Document) -> Generation:
        return await self.backend.generate(self.prompt(question, doc), max_tokens=self.max_tokens)

    async def predict_many(self, question: str, docs: Sequence[Document]) -> list[Generation | BaseException]:
        prompts = [self.prompt(question, d) for d in docs]
        try:
            return await generate_all(self.backend, prompts, max_tokens=self.max_tokens)
        except MainRAGError as exc:  # the whole batch failed: every document with it
            return [exc] * len(prompts)


class Judge:
    """Agent-2: log P(Yes) - log P(No) that the document supports the answer.

    A template that ``continues`` the Predictor's (the conversation layout)
    is asked after the Predictor's own prompt and answer, so a backend that
    caches prefixes reads each document once for both agents.
    """

    def __init__(
        self, name: str, backend: Backend, template: PromptTemplate, *, max_doc_chars: int,
        predictor: PromptTemplate | None = None,
    ):  # fmt: skip
        self.name, self.backend, self.template = name, backend, template
        self.max_doc_chars = max_doc_chars
        self.predictor = predictor or (load_template(template.continues) if template.continues else None)

    @property
    def needs_answer(self) -> bool:
        """Whether this judge reads the Predictor's answer: the Predictor runs only for such judges."""
        return bool(self.template.continues) or "answer" in self.template.fields

    def prompt(self, question: str, doc: Document, answer: str | None) -> Prompt:
        document = fence(doc.content, self.max_doc_chars)
        if self.template.continues:
            if answer is None or self.predictor is None:
                raise ConfigError(f"{self.template.source} continues the Predictor: it needs the Predictor's answer")
            asked = self.predictor.render(document=document, question=question)
            follow_up = self.template.user.format(question=question)
            # The answer was written from the document: neutralised like it.
            reply = Message(role="assistant", content=fence(answer, self.max_doc_chars))
            return (*asked, reply, Message(role="user", content=follow_up))
        fields = {"document": document, "question": question}
        if answer is not None:
            # A hostile document speaks through the answer: quote it as untrusted data too.
            fields["answer"] = fence(answer, self.max_doc_chars)
        return self.template.render(**fields)

    async def score(self, question: str, doc: Document, answer: str | None) -> Judgement:
        return await self.backend.judge(self.prompt(question, doc, answer))

    async def score_many(
        self, question: str, docs: Sequence[Document], answers: Sequence[Answer]
    ) -> list[Judgement | BaseException]:
        """Every document's judgement; a document whose prediction failed gets
        that failure instead (it is unscored, not scored on an empty answer)."""
        if not self.needs_answer:  # another judge's Predictor may have run: its failures are not ours
            answers = [None] * len(docs)
        todo = [i for i, a in enumerate(answers) if not isinstance(a, BaseException)]
        prompts = [self.prompt(question, docs[i], answers[i]) for i in todo]  # type: ignore[arg-type]
        try:
            verdicts = await judge_all(self.backend, prompts)
        except MainRAGError as exc:  # the whole batch failed: every document with it
            verdicts = [exc] * len(prompts)
        done = dict(zip(todo, verdicts, strict=True))
        return [done[i] if i in done else _failed(a) for i, a in enumerate(answers)]


def _failed(answer: Answer) -> BaseException:
    assert isinstance(answer, BaseException)
    error = MainRAGError(f"predictor failed: {type(answer).__name__}: {answer}")
    error.__cause__ = answer
    return error


class FinalPredictor:
    """Agent-3: answers from the kept documents, in the order given.

    The documents share ``max_chars`` characters in all, so the prompt fits the
    model's context on every backend (a server answers an overlong prompt with
    an error, not a truncation); :meth:`caps` says what each one keeps.
    """

    def __init__(
        self, backend: Backend, template: PromptTemplate, *, max_tokens: int, max_doc_chars: int,
        max_chars: int | None = None,
    ):  # fmt: skip
        self.backend, self.template = backend, template
        self.max_tokens, self.max_doc_chars, self.max_chars = max_tokens, max_doc_chars, max_chars

    @classmethod
    def from_settings(cls, s: Settings, backend: Backend) -> FinalPredictor:
        return cls(backend, load_template(s.final_prompt), max_tokens=s.final_max_tokens,
                   max_doc_chars=s.max_doc_chars, max_chars=s.final_max_chars)

    def caps(self, docs: Sequence[Document]) -> list[int]:
        """Characters of each document the prompt holds."""
        lengths = [min(len(d.content), self.max_doc_chars) for d in docs]
        return lengths if self.max_chars is None else share_budget(lengths, self.max_chars)

    async def answer(self, question: str, docs: Sequence[Document]) -> Generation:
        prompt = self.template.render(documents=fenced_documents(docs, self.caps(docs)), question=question)
        return await self.backend.generate(prompt, max_tokens=self.max_tokens)
