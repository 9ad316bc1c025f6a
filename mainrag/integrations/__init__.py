"""Adapters for other frameworks; each module imports its framework, so import the
one you use: ``from mainrag.integrations.langchain import MainRAGRetriever``."""
