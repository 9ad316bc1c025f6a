"""mainrag: MAIN-RAG multi-agent filtering of retrieved documents."""

from mainrag.config import BackendSettings, JudgeSettings, Settings
from mainrag.documents import Document
from mainrag.engine import MainRAG
from mainrag.errors import (
    BackendError,
    ConfigError,
    InputError,
    JudgeError,
    MainRAGError,
    ModelNotInstalledError,
)
from mainrag.results import AnswerResult, FilterResult, JudgeScore, ScoredDocument, Usage
from mainrag.threshold import Bar

__all__ = [
    "AnswerResult", "BackendError", "BackendSettings", "Bar", "ConfigError", "Document",
    "FilterResult", "InputError", "JudgeError", "JudgeScore", "JudgeSettings", "MainRAG",
    "MainRAGError", "ModelNotInstalledError", "ScoredDocument", "Settings", "Usage",
]
__version__ = "0.1.0"
