"""Citations from evidence: each sentence of an answer cites the passage that holds what it says.

The model is not asked to cite. A 0.5B model wrote passage numbers that pointed at the wrong passage, copied
placeholders such as "[编号]", or answered with nothing but a list of labels; the passages' own words tell
which one a sentence came from far more reliably. What a sentence shares with the question does not count as
evidence: every passage on the topic shares that.

>>> from kbcore.types import Chunk, Hit
>>> hits = [Hit(Chunk(1, 1, "a.pdf", 0, 3, 3, "", "第十条 期限为十五日。"), 1.0),
...         Hit(Chunk(2, 1, "b.pdf", 1, 4, 5, "", "第九条 保证金不超过百分之二。"), 0.5)]
>>> found = attribute("保证金不得超过2%。期限是15日[7]。", hits, "保证金和期限是多少？")
>>> found.text
'保证金不得超过2%[1]。期限是15日[2]。'
>>> [(c.index, c.source, c.pages) for c in found.citations], found.unsupported
([(1, 'b.pdf', [4, 5]), (2, 'a.pdf', [3])], [])
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from kbcore.types import Citation, Hit
from llm.checks import bigrams, content_of, numbers_in, unsupported_numbers, unsupported_terms

# [1], [1, 2], 【1】, ［1］, [1-3]: whatever markers the model wrote itself are dropped.
_MARKER = re.compile(r"\s*[\[【［]\s*\d+(?:\s*[,，、\-–]\s*\d+)*\s*[\]】］]")
_SENTENCE = re.compile(r"[^。！？!?；;\n]+[。！？!?；;\n]*")
_TRAILING_PUNCT = re.compile(r"[。！？!?；;，,\s]*$")
SNIPPET_CHARS = 160
# Share of a sentence's own bigrams (those not in the question) that a passage must hold to be cited for it.
MIN_SUPPORT = 0.3


def _citation(index: int, hit: Hit) -> Citation:
    snippet = hit.chunk.text.strip()
    if len(snippet) > SNIPPET_CHARS:
        snippet = snippet[:SNIPPET_CHARS] + "…"
    return Citation(index=index, source=hit.source, pages=hit.pages, snippet=snippet, chunk_id=hit.chunk.id)


def best_passage(sentence: str, passages: Sequence[tuple[set[str], set[str]]], question: set[str]
                 ) -> tuple[int | None, float]:
    """The 0-based passage holding most of the sentence's own bigrams and numbers, and that share. A number
    weighs as much as two bigrams: it is the fact, and a paraphrase keeps it while changing the words."""
    own = bigrams(content_of(sentence))
    if len(own - question) >= 2:
        own -= question
    numbers = set(numbers_in(sentence))
    if not own and not numbers:
        return None, 0.0
    whole = len(own) + 2 * len(numbers)
    shares = [(len(own & grams) + 2 * len(numbers & nums)) / whole for grams, nums in passages]
    best = max(range(len(shares)), key=lambda i: (shares[i], -i), default=None)
    return (best, shares[best]) if best is not None else (None, 0.0)


class Attribution(NamedTuple):
    text: str  # the answer with a [n] after each run of sentences that one passage supports
    citations: list[Citation]  # the cited passages, numbered in citing order
    sentences: list[str]  # sentences no passage supports
    claims: list[str]  # numbers and Latin-script terms the cited passages do not hold

    @property
    def unsupported(self) -> list[str]:
        return self.sentences + self.claims


def attribute(text: str, passages: Sequence[Hit], question: str = "") -> Attribution:
    """Cite, for each run of sentences of ``text``, the passage that supports it, and say what the cited passages
    do not hold."""
    text = _MARKER.sub("", text).strip()
    grams = [(bigrams(content_of(h.text)), set(numbers_in(h.text))) for h in passages]
    asked = bigrams(content_of(question))
    pieces = _SENTENCE.findall(text) or [text]
    sources: list[int | None] = []
    unsupported: list[str] = []
    for piece in pieces:
        best, share = best_passage(piece, grams, asked)
        if len(content_of(piece)) < 2:  # a stray number or punctuation: it belongs to the sentence before
            sources.append(sources[-1] if sources else None)
            continue
        sources.append(best if share >= MIN_SUPPORT else None)
        if share < MIN_SUPPORT:
            unsupported.append(piece.strip())
    order: list[int] = []
    out = []
    for i, (piece, source) in enumerate(zip(pieces, sources)):
        if source is not None and (i + 1 == len(pieces) or sources[i + 1] != source):
            if source not in order:
                order.append(source)
            body = _TRAILING_PUNCT.sub("", piece)
            piece = f"{body}[{order.index(source) + 1}]{piece[len(body):]}"
        out.append(piece)
    cited = [passages[i] for i in order]
    held = [h.text for h in cited]
    claims = unsupported_numbers(text, held, question) + unsupported_terms(text, held, question) if cited else []
    return Attribution("".join(out), [_citation(n, hit) for n, hit in enumerate(cited, start=1)], unsupported,
                       claims)


def supporting_passage(text: str, passages: Sequence[Hit], min_overlap: float = 0.35) -> int | None:
    """The 1-based passage the text overlaps most (character bigrams), or None below ``min_overlap``.
    Training data uses it to say which passage a reference answer came from."""
    answer = bigrams(text)
    if not answer:
        return None
    scores = [len(answer & bigrams(hit.chunk.text)) / len(answer) for hit in passages]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i), default=None)
    return best + 1 if best is not None and scores[best] >= min_overlap else None
