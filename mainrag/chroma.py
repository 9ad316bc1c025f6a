"""The Chroma vector store: an embedded folder by default, or a Chroma server.

Every vector is computed here, by our embedding function, and handed to Chroma
explicitly (``embeddings=`` / ``query_embeddings=``): embedding runs where we
choose (a worker thread under asyncio), and a collection is only ever queried
with the model that made it, which its metadata names (``embedding_model``).

Configuration comes from arguments or ``MAINRAG_CHROMA_*`` variables:
``PATH`` (embedded folder), ``HOST``/``PORT``/``SSL`` (a server), ``TOKEN``
(sent as a bearer token, never printed), ``COLLECTION`` (default name).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platformdirs import user_data_dir
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mainrag.documents import Document, content_id
from mainrag.errors import BackendError, ConfigError, InputError

if TYPE_CHECKING:
    from chromadb.api import AsyncClientAPI, ClientAPI
    from chromadb.api.models.AsyncCollection import AsyncCollection
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import EmbeddingFunction

__all__ = ["ChromaSettings", "ChromaStore", "CollectionInfo", "StoreError", "chroma_metadata"]

MODEL_KEY = "embedding_model"  # collection metadata: the model behind its vectors
HASH_KEY = "content_hash"  # passage metadata: what was embedded (idempotent re-ingest)
TITLE_KEY = "title"
_INTERNAL = frozenset({HASH_KEY, TITLE_KEY})
_INCLUDE = ["documents", "metadatas", "distances"]


class StoreError(BackendError):
    """The Chroma store could not answer (server unreachable, refused, corrupt)."""


class ChromaSettings(BaseSettings):
    """Where the vectors live. Unset ``host``: the embedded store in ``path``."""

    model_config = SettingsConfigDict(env_prefix="MAINRAG_CHROMA_", extra="ignore")

    path: Path | None = None  # default: <user data dir>/mainrag/chroma
    host: str | None = None
    port: int = Field(8000, ge=1, le=65535)
    ssl: bool = False
    token: SecretStr | None = None
    auth_header: str = "Authorization"  # "Authorization" sends "Bearer <token>"; else the raw token
    tenant: str = "default_tenant"
    database: str = "default_database"
    collection: str = "mainrag"

    @property
    def is_server(self) -> bool:
        return bool(self.host)

    @property
    def persist_dir(self) -> Path:
        return (self.path or Path(user_data_dir("mainrag")) / "chroma").expanduser()

    def describe(self) -> str:
        """Where the store is, for messages (never the token)."""
        if self.is_server:
            return f"Chroma server {'https' if self.ssl else 'http'}://{self.host}:{self.port}"
        return f"embedded Chroma store {self.persist_dir}"

    def headers(self) -> dict[str, str] | None:
        if self.token is None:
            return None
        secret = self.token.get_secret_value()
        value = f"Bearer {secret}" if self.auth_header.lower() == "authorization" else secret
        return {self.auth_header: value}


class CollectionInfo(BaseModel):
    """One collection as ``mainrag collections`` lists it."""

    name: str
    count: int
    embedding_model: str | None


def _storable(value: object) -> bool:
    """A value Chroma keeps as it is: str, bool, finite float, 64-bit int."""
    if isinstance(value, bool | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and -(2**63) <= value < 2**63


def chroma_metadata(doc: Document) -> dict[str, str | int | float | bool]:
    """A passage's metadata as Chroma stores it: scalars kept, None dropped,
    anything else as JSON text; plus its title and content hash."""
    meta: dict[str, str | int | float | bool] = {}
    for key, value in doc.metadata.items():
        if value is None or key in _INTERNAL or key.startswith("chroma:"):
            continue
        meta[str(key)] = value if _storable(value) else json.dumps(value, ensure_ascii=False, default=str)
    meta[TITLE_KEY] = doc.title
    meta[HASH_KEY] = content_id(doc.title, doc.text)
    return meta


def _document(doc_id: str, text: str | None, meta: Mapping[str, Any] | None, distance: float | None) -> Document:
    meta = dict(meta or {})
    title = str(meta.pop(TITLE_KEY, "") or "")
    meta.pop(HASH_KEY, None)
    if distance is not None:  # cosine distance: 1 - similarity
        meta["retriever_distance"] = float(distance)
        meta["retriever_score"] = 1.0 - float(distance)
    return Document(id=doc_id, text=text or "", title=title, metadata=meta)


def _documents(result: Mapping[str, Any]) -> list[Document]:
    """The first query's hits of a Chroma ``query`` result, best first."""
    ids = result["ids"][0]
    docs = (result.get("documents") or [[None] * len(ids)])[0]
    metas = (result.get("metadatas") or [[None] * len(ids)])[0]
    dists = (result.get("distances") or [[None] * len(ids)])[0]
    return [_document(*row) for row in zip(ids, docs, metas, dists, strict=True)]


def _recorded_model(metadata: Mapping[str, Any] | None, configuration: Mapping[str, Any] | None) -> str | None:
    """The model a collection's vectors came from: ours, else Chroma's persisted one."""
    if metadata and metadata.get(MODEL_KEY):
        return str(metadata[MODEL_KEY])
    ef = (configuration or {}).get("embedding_function") or {}
    return str(ef["name"]) if ef.get("name") and ef.get("type") != "legacy" else None


def _not_found(exc: Exception) -> bool:
    from chromadb.errors import NotFoundError

    return isinstance(exc, NotFoundError) or "does not exist" in str(exc)


class ChromaStore:
    """A Chroma client (embedded or server), one embedding model, many collections.

    >>> store = ChromaStore()                                 # ~/.local/share/mainrag/chroma
    >>> store = ChromaStore(host="127.0.0.1", port=8000)      # a `chroma run` server
    >>> store.upsert("wiki", docs); store.query("wiki", "Who wrote Hamlet?", k=20)
    """

    def __init__(
        self,
        settings: ChromaSettings | None = None,
        *,
        embedding_function: EmbeddingFunction[Any] | None = None,
        **overrides: Any,
    ):
        overrides = {k: v for k, v in overrides.items() if v is not None}  # unset: env or default
        try:
            base = settings or ChromaSettings()
            self.settings = ChromaSettings.model_validate({**base.model_dump(), **overrides}) if overrides else base
        except ValueError as exc:
            raise ConfigError(f"invalid Chroma settings: {exc}") from None
        self._ef = embedding_function
        self._client: ClientAPI | None = None
        self._aclient: AsyncClientAPI | None = None
        self._collections: dict[str, Collection] = {}
        self._acollections: dict[str, AsyncCollection] = {}

    def __repr__(self) -> str:
        return f"ChromaStore({self.settings.describe()})"

    # -- the embedding model --------------------------------------------------

    @property
    def embedding_function(self) -> EmbeddingFunction[Any]:
        if self._ef is None:
            from mainrag.embeddings import MiniLMEmbedding

            self._ef = MiniLMEmbedding()
        return self._ef

    @property
    def model_id(self) -> str:
        from mainrag.embeddings import embedding_model_id

        return embedding_model_id(self.embedding_function)

    def embed(self, texts: Sequence[str]) -> Any:
        """Vectors for texts (CPU-bound: call from a thread under asyncio)."""
        return self.embedding_function(list(texts))

    # -- clients ----------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Chroma and HTTP failures as one readable StoreError naming the store."""
        import httpx
        from chromadb.errors import ChromaError, InvalidArgumentError

        try:
            yield
        except (InputError, ConfigError, StoreError):
            raise
        except InvalidArgumentError as exc:  # e.g. a collection name Chroma does not accept
            raise InputError(f"{what}: {exc}") from None
        except httpx.HTTPError as exc:
            raise StoreError(f"{what}: cannot reach {self.settings.describe()} ({type(exc).__name__}: {exc})") from None
        except Exception as exc:
            # Chroma's HTTP client raises a bare Exception(body) for a non-JSON error reply.
            if type(exc) is Exception or isinstance(exc, ChromaError | ValueError | OSError):
                raise StoreError(f"{what}: {self.settings.describe()} failed: {exc or type(exc).__name__}") from None
            raise

    def _chroma_settings(self) -> Any:
        # Chroma's defaults, deliberately: it keeps one client per path (or server) per
        # process and refuses a second one with other settings, e.g. langchain-chroma's.
        # (Its product telemetry is a no-op in 1.5.9.)
        return None

    @property
    def client(self) -> ClientAPI:
        """The synchronous client (created on first use)."""
        if self._client is None:
            import chromadb

            s = self.settings
            with self._errors("opening the store"):
                if s.is_server:
                    self._client = chromadb.HttpClient(
                        host=s.host or "", port=s.port, ssl=s.ssl, headers=s.headers(),
                        settings=self._chroma_settings(), tenant=s.tenant, database=s.database,
                    )
                else:
                    s.persist_dir.mkdir(parents=True, exist_ok=True)
                    self._client = chromadb.PersistentClient(
                        path=s.persist_dir, settings=self._chroma_settings(), tenant=s.tenant, database=s.database,
                    )
        return self._client

    async def aclient(self) -> AsyncClientAPI:
        """The async client of a server store (Chroma keeps one HTTP pool per event loop)."""
        if self._aclient is None:
            import chromadb

            s = self.settings
            with self._errors("opening the store"):
                self._aclient = await chromadb.AsyncHttpClient(
                    host=s.host or "", port=s.port, ssl=s.ssl, headers=s.headers(),
                    settings=self._chroma_settings(), tenant=s.tenant, database=s.database,
                )
        return self._aclient

    # -- collections --------------------------------------------------------------

    def _check_model(self, name: str, metadata: Mapping[str, Any] | None, configuration: Mapping[str, Any] | None) -> None:
        from mainrag.embeddings import compatible

        recorded = _recorded_model(metadata, configuration)
        if recorded is None:
            raise ConfigError(
                f"collection {name!r} records no embedding model, so its vectors cannot be trusted to "
                f"match {self.model_id!r}; re-ingest it with mainrag"
            )
        if not compatible(recorded, self.model_id):
            raise ConfigError(
                f"collection {name!r} holds vectors of {recorded!r} but this store embeds with "
                f"{self.model_id!r}; pass the matching embedding function or re-ingest into a new collection"
            )

    def _missing(self, name: str) -> InputError:
        return InputError(
            f"no collection {name!r} in {self.settings.describe()}; create it with: "
            f"mainrag ingest FILE --collection {name}"
        )

    def collection(self, name: str, *, create: bool = False) -> Collection:
        """A collection checked to hold vectors of this store's model."""
        if name in self._collections:
            return self._collections[name]
        with self._errors(f"opening collection {name!r}"):
            try:
                col = self.client.get_collection(name, embedding_function=None)
            except Exception as exc:
                if not _not_found(exc):
                    raise
                if not create:
                    raise self._missing(name) from None
                col = self.client.get_or_create_collection(
                    name, metadata={MODEL_KEY: self.model_id, "created_by": "mainrag"},
                    configuration={"hnsw": {"space": "cosine"}}, embedding_function=self.embedding_function,
                )
        self._check_model(name, col.metadata, col.configuration_json)
        self._collections[name] = col
        return col

    async def acollection(self, name: str) -> AsyncCollection:
        if name not in self._acollections:
            client = await self.aclient()
            with self._errors(f"opening collection {name!r}"):
                try:
                    col = await client.get_collection(name, embedding_function=None)
                except Exception as exc:
                    if _not_found(exc):
                        raise self._missing(name) from None
                    raise
            self._check_model(name, col.metadata, col.configuration_json)
            self._acollections[name] = col
        return self._acollections[name]

    def collections(self) -> list[CollectionInfo]:
        with self._errors("listing collections"):
            return [
                CollectionInfo(name=c.name, count=c.count(), embedding_model=_recorded_model(c.metadata, c.configuration_json))
                for c in sorted(self.client.list_collections(), key=lambda c: c.name)
            ]

    def delete(self, name: str) -> None:
        self._collections.pop(name, None)
        self._acollections.pop(name, None)
        with self._errors(f"deleting collection {name!r}"):
            try:
                self.client.delete_collection(name)
            except Exception as exc:
                if _not_found(exc):
                    raise self._missing(name) from None
                raise

    def count(self, name: str) -> int:
        with self._errors(f"counting {name!r}"):
            return self.collection(name).count()

    @property
    def max_batch_size(self) -> int:
        with self._errors("asking the batch limit"):
            return int(self.client.get_max_batch_size())

    # -- passages -----------------------------------------------------------------

    def stored_metadata(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored metadata (content hash included) of each of ``ids`` already stored."""
        with self._errors(f"reading {name!r}"):
            got = self.collection(name).get(ids=list(ids), include=["metadatas"])
        metas = got.get("metadatas") or [None] * len(got["ids"])
        return {i: dict(m or {}) for i, m in zip(got["ids"], metas, strict=True)}

    def update_metadata(self, name: str, docs: Sequence[Document], stored: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the metadata of stored passages whose text is unchanged: no re-embedding.
        ``stored`` is their metadata now (from :meth:`stored_metadata`)."""
        if not docs:
            return
        # Chroma merges metadata on update; a key the new version dropped is removed with None.
        metas = [{**dict.fromkeys(stored.get(d.id, {})), **chroma_metadata(d)} for d in docs]
        with self._errors(f"writing to {name!r}"):
            self.collection(name).update(ids=[d.id for d in docs], metadatas=metas)  # type: ignore[arg-type]

    def upsert(self, name: str, docs: Sequence[Document]) -> None:
        """Embed and write passages (same id: replaced). Creates the collection."""
        if not docs:
            return
        col = self.collection(name, create=True)
        vectors = self.embed([d.content for d in docs])
        with self._errors(f"writing to {name!r}"):
            col.upsert(
                ids=[d.id for d in docs], embeddings=vectors, documents=[d.text for d in docs],
                metadatas=[chroma_metadata(d) for d in docs],  # type: ignore[misc]
            )

    def query(self, name: str, text: str, k: int) -> list[Document]:
        """The ``k`` nearest passages, best first (blocking)."""
        col = self.collection(name)
        vector = self.embed([text])
        with self._errors(f"querying {name!r}"):
            return _documents(col.query(query_embeddings=vector, n_results=k, include=_INCLUDE))  # type: ignore[arg-type]

    async def aquery(self, name: str, text: str, k: int) -> list[Document]:
        """The ``k`` nearest passages without blocking the event loop: the
        embedded client runs in a worker thread, a server through Chroma's async client."""
        if not self.settings.is_server:
            return await asyncio.to_thread(self.query, name, text, k)
        col = await self.acollection(name)
        vector = await asyncio.to_thread(self.embed, [text])
        with self._errors(f"querying {name!r}"):
            return _documents(await col.query(query_embeddings=vector, n_results=k, include=_INCLUDE))  # type: ignore[arg-type]
