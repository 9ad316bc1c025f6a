"""The three MAIN-RAG agents. Each renders its prompt and asks its backend."""

from __future__ import annotations

from collections.abc import Sequence

from mainrag.backends.base import Backend, Generation, Judgement
from mainrag.documents import Document
from mainrag.prompts import PromptTemplate, fence, fenced_documents


class Predictor:
    """Agent-1: answers the question from one document alone."""

    def __init__(self, backend: Backend, template: PromptTemplate, *, max_tokens: int, max_doc_chars: int):
        self.backend, self.template = backend, template
        self.max_tokens, self.max_doc_chars = max_tokens, max_doc_chars

    async def predict(self, question: str, doc: Document) -> Generation:
        prompt = self.template.render(document=fence(doc.content, self.max_doc_chars), question=question)
        return await self.backend.generate(prompt, max_tokens=self.max_tokens)


class Judge:
    """Agent-2: log P(Yes) - log P(No) that the document supports the answer."""

    def __init__(self, name: str, backend: Backend, template: PromptTemplate, *, max_doc_chars: int):
        self.name, self.backend, self.template = name, backend, template
        self.max_doc_chars = max_doc_chars

    async def score(self, question: str, doc: Document, answer: str | None) -> Judgement:
        fields = {"document": fence(doc.content, self.max_doc_chars), "question": question}
        if answer is not None:
            # The Predictor wrote the answer from the document, so a hostile
            # document speaks through it: quote it as untrusted data too.
            fields["answer"] = fence(answer, self.max_doc_chars)
        return await self.backend.judge(self.template.render(**fields))


class FinalPredictor:
    """Agent-3: answers from the kept documents, most useful first."""

    def __init__(self, backend: Backend, template: PromptTemplate, *, max_tokens: int, max_doc_chars: int):
        self.backend, self.template = backend, template
        self.max_tokens, self.max_doc_chars = max_tokens, max_doc_chars

    async def answer(self, question: str, docs: Sequence[Document]) -> Generation:
        prompt = self.template.render(
            documents=fenced_documents(docs, self.max_doc_chars), question=question
        )
        return await self.backend.generate(prompt, max_tokens=self.max_tokens)
