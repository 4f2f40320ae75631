"""The plain types that carry data between stages.

Frameworks' document types (LangChain ``Document``, LlamaIndex ``NodeWithScore``) appear only in adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass(frozen=True)
class Document:
    """One source file in a knowledge base. ``source`` is its path relative to the ingested folder."""

    id: int
    source: str
    content_hash: str
    title: str
    pages: int
    chunks: int
    updated_at: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's text. Pages are 1-based and inclusive; ``heading`` is the heading path
    joined with `` > `` (empty when the text sits before any heading)."""

    id: int
    document_id: int
    source: str
    ordinal: int
    page_start: int
    page_end: int
    heading: str
    text: str

    @property
    def pages(self) -> list[int]:
        return list(range(self.page_start, self.page_end + 1))


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its scores. ``score`` is what ranking used (fused when hybrid);
    ``dense`` is the cosine similarity of query and chunk (None when not computed), ``lexical`` the BM25 score."""

    chunk: Chunk
    score: float
    dense: float | None = None
    lexical: float | None = None
    rank: int = 0
    # Text of the chunk with its neighbours merged in, and the first and last page that text covers, when
    # retrieval widened the hit (RetrievalSettings.context_window, min_context_chars).
    context: str | None = None
    context_pages: tuple[int, int] | None = None
    # The identity block of the hit's document (case number, parties; kbcore.text.document_opening) when this
    # chunk does not hold it itself: the reader needs it to tell look-alike documents apart.
    opening: str = ""

    @property
    def text(self) -> str:
        return self.context or self.chunk.text

    @property
    def source(self) -> str:
        return self.chunk.source

    @property
    def pages(self) -> list[int]:
        """The pages of ``text``: a citation of this hit points at all of them."""
        if self.context_pages is not None:
            return list(range(self.context_pages[0], self.context_pages[1] + 1))
        return self.chunk.pages

    @property
    def heading(self) -> str:
        return self.chunk.heading


@dataclass(frozen=True)
class Citation:
    """A numbered passage the answer cites: ``index`` is the [n] used in the answer text."""

    index: int
    source: str
    pages: list[int]
    snippet: str
    chunk_id: int | None = None


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Citation] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    # False when the documents do not hold an answer and the text says so.
    found: bool = True
    question: str = ""
    # The standalone question actually used for retrieval (differs from ``question`` for follow-ups).
    search_query: str = ""
    # Why the model's own text was no answer, when it was not: degenerate ("loop", "echo", "placeholder", ...
    # llm.checks), no quantity where one was asked, a claim no passage holds ("unsupported"), or the number of a
    # neighbouring clause ("misplaced"); the text shown is then a quote of the best passage, or "not found".
    # "list": asked which ones, the answer shown is the list a passage gives whole.
    degenerate: str | None = None
    # Claims of the answer (sentences, numbers, Latin-script names) that its cited passages do not contain:
    # shown to the user as unverified.
    unsupported: tuple[str, ...] = ()
    # Names the question asks about that no document mentions: why it was not answered.
    unmentioned: tuple[str, ...] = ()
