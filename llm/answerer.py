"""Retrieval-augmented answers: retrieve, decide whether anything relevant was found, prompt, generate, cite.

Why a relevance threshold rather than trusting the model: both small Qwen models make up answers when the
context holds none, and a prompt strict enough to stop that makes them refuse everything. So the decision is
taken before generation: on the best hit's dense cosine (``settings.llm.min_relevance``), on the names the
question asks about (a program, a standard, a year, a city) that no document mentions, and on the titles it
names in 《》 or the numbers it writes in digits that no retrieved passage holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

from engine.decoding import DecodeOptions, stop_ids
from engine.generate import generate, stream_from_compute_thread
from engine.models import LoadedModel, load_model
from kbcore.config import LLMSettings, Settings
from kbcore.types import Answer, Hit
from llm.checks import (asked_quantity, asks_for_list, degenerate_reason, states_quantity, trim_loop,
                        without_restatements)
from llm.citations import attribute
from llm.passages import (asked_names, is_list, misplaced_quantity, missing_numbers, missing_titles, quote,
                          select_passages)
from llm.prompts import (ANSWER_RULE, NOT_FOUND, QUOTED, SYSTEM, UNMENTIONED, build_messages, language_of,
                         render_prompt)

# Signs that a question leans on the previous turn: "and what about", pronouns, "this/that article", a trailing 呢.
_FOLLOW_UP = re.compile(
    r"^(那|那么|还有|另外|然后|再说|and\b|what about|how about)|它|上述|前者|后者|其中|[该这那此][条项款个些种]|"
    r"呢[？?]?$", re.IGNORECASE)
# English pronouns only mark a follow-up in a short question ("Is it free?"), not in a self-contained one.
_SHORT_PRONOUN = re.compile(r"^\W*(\w+\W+){0,5}\b(it|its|they|them|those|that one)\b(\W+\w+){0,3}\W*$", re.IGNORECASE)


def standalone_question(question: str, history: Sequence[dict] | None, turns: int = 3) -> str:
    """The question to search with. A follow-up ("那第二条呢？") is joined to the previous user question,
    so retrieval sees the topic; a self-contained question is searched as it is.

    >>> standalone_question("那第二条呢？", [{"role": "user", "content": "政府采购法第一条讲什么？"},
    ...                                   {"role": "assistant", "content": "……"}])
    '政府采购法第一条讲什么？ 那第二条呢？'
    >>> standalone_question("招标投标法适用于哪些项目？", [{"role": "user", "content": "政府采购法第一条讲什么？"}])
    '招标投标法适用于哪些项目？'
    >>> before = [{"role": "user", "content": "What is dpkg?"}]
    >>> standalone_question("Is it free?", before), standalone_question("Who discovered the moons of Jupiter and named them?", before)
    ('What is dpkg? Is it free?', 'Who discovered the moons of Jupiter and named them?')
    """
    previous = [m["content"] for m in (history or []) if m.get("role") == "user"][-turns:]
    q = question.strip()
    if previous and (_FOLLOW_UP.search(q) or _SHORT_PRONOUN.match(q)):
        return f"{previous[-1]} {q}"
    return q


@dataclass
class Prepared:
    question: str
    search_query: str
    hits: list[Hit]
    passages: list[Hit]
    prompt: str | None  # None: nothing relevant, answer "not found" without generating
    unmentioned: tuple[str, ...] = ()  # names the question asks about that no document mentions


class Answerer:
    """Answers questions over one retriever with one loaded model (both shared, both loaded once)."""

    def __init__(self, settings: Settings, retriever, loaded: LoadedModel | None = None):
        self.settings = settings
        self.retriever = retriever
        self._loaded = loaded

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.settings.llm, self.settings.cache_dir,
                                      adapters_dir=self.settings.adapters_dir)
        return self._loaded

    # ------------------------------------------------------------ preparing the prompt
    def prepare(self, question: str, history: Sequence[dict] | None = None, k: int | None = None,
                sources: Sequence[str] | None = None) -> Prepared:
        """Retrieve (from ``sources`` only, when given) and build the prompt, or decide nothing relevant was found."""
        cfg = self.settings.llm
        query = standalone_question(question, history, cfg.history_turns)
        hits = self.retriever.search(query, k or self.settings.retrieval.top_k, sources=sources) if query else []
        best = max((h.dense if h.dense is not None else h.score for h in hits), default=None)
        if best is None or best < cfg.min_relevance:
            return Prepared(question, query, hits, [], None)
        mentions = getattr(self.retriever, "mentions", None)
        passages = select_passages(query, hits, cfg.max_passages)
        # Titles and numbers are looked for in what was retrieved, so the reply names only those the whole
        # knowledge base lacks too; the others may be a retrieval miss.
        missing = missing_titles(query, hits) + missing_numbers(query, passages)
        unmentioned = tuple(n for n in asked_names(query) + missing if mentions and not mentions(n))
        if unmentioned or missing:
            return Prepared(question, query, hits, [], None, unmentioned)
        passages, prompt = self.fit_prompt(question, passages, history)
        return Prepared(question, query, hits, passages, prompt)

    def fit_prompt(self, question: str, passages: list[Hit], history: Sequence[dict] | None
                   ) -> tuple[list[Hit], str]:
        """The prompt within ``max_prompt_tokens``: lowest-ranked passages go first, then the last kept one is
        cut short, then old history turns; it never fails for length."""
        tokenizer = self.loaded.tokenizer
        budget = self.settings.llm.max_prompt_tokens
        history = list(history or [])[-2 * self.settings.llm.history_turns:]

        def size(hits, texts, hist) -> int:
            return len(tokenizer(render_prompt(tokenizer, build_messages(question, hits, hist, texts)))["input_ids"])

        texts = [h.text for h in passages]
        while size(passages, texts, history) > budget and (len(passages) > 1 or history):
            if history:
                history = history[2:]
            else:
                passages, texts = passages[:-1], texts[:-1]
        overflow = size(passages, texts, history) - budget
        if overflow > 0:
            ids = tokenizer(texts[-1], add_special_tokens=False)["input_ids"]
            texts[-1] = tokenizer.decode(ids[: max(16, len(ids) - overflow - 8)]) + "…"
        return passages, render_prompt(tokenizer, build_messages(question, passages, history, texts))

    # ------------------------------------------------------------ generating
    def decode_options(self) -> DecodeOptions:
        return decode_options(self.settings.llm, self.loaded)

    def generate(self, prompt: str, options: DecodeOptions | None = None) -> Iterator[str]:
        """Text pieces of the model's answer to ``prompt`` (on the calling thread; ``stream`` moves it to the
        model's thread). bench_llm times exactly this."""
        return generate(self.loaded, prompt, options or self.decode_options())

    def stream(self, question: str, history: Sequence[dict] | None = None, k: int | None = None,
               sources: Sequence[str] | None = None) -> "AnswerStream":
        return AnswerStream(self, self.prepare(question, history, k, sources))

    def answer(self, question: str, history: Sequence[dict] | None = None, k: int | None = None,
               sources: Sequence[str] | None = None) -> Answer:
        stream = self.stream(question, history, k, sources)
        for _ in stream:
            pass
        return stream.answer

    def finish(self, prepared: Prepared, text: str) -> Answer:
        language = language_of(prepared.question)
        if prepared.prompt is None:
            return self._not_found(prepared, language)
        text = text.strip()
        if NOT_FOUND["zh"].rstrip("。") in text or NOT_FOUND["en"].rstrip(".") in text:
            return self._not_found(prepared, language)
        passages, question = prepared.passages, prepared.question
        sources = [h.source for h in passages]
        said = without_restatements(text, question, (ANSWER_RULE[language], SYSTEM[language]))
        degenerate = degenerate_reason(said, question, sources) if said else "echo"
        text = said or text
        if degenerate is None and (wants := asked_quantity(question)) and not states_quantity(text, wants):
            # Asked "how many days", it gave no number of days: it answered another question.
            degenerate = "no_quantity"
        if degenerate is None:
            found = attribute(text, passages, question)
            if not found.citations or found.claims:
                # Nothing of it in any passage, or a number or name no passage it cites holds: the 0.5B took it
                # from nowhere or from the wrong law.
                degenerate = "unsupported"
            elif misplaced_quantity(question, text, passages):
                degenerate = "misplaced"  # the number of a neighbouring clause
            elif asks_for_list(question) and (quoted := self.quote(question, passages)) and is_list(quoted):
                # Asked which ones, the 0.5B dropped or mixed up items of the list a passage gives whole.
                return self._answer(prepared, attribute(QUOTED[language] + quoted, passages, question), "list")
            else:
                return self._answer(prepared, found)
        usable = trim_loop(text) if degenerate == "loop" else None
        if usable is None or degenerate_reason(usable, question, sources) is not None:
            # No usable answer from the model: show the passage sentence that best matches the question, marked
            # as a quote, rather than the model's output or a guess; when no sentence matches it well enough,
            # the documents did not answer it.
            quoted = self.quote(question, passages)
            if quoted is None:
                return self._not_found(prepared, language, degenerate)
            usable = QUOTED[language] + quoted
        return self._answer(prepared, attribute(usable, passages, question), degenerate)

    def quote(self, question: str, passages: Sequence[Hit]) -> str | None:
        """The passage sentence (with the list it opens) that answers the question, or None (``llm.passages.quote``)."""
        quoted = quote(question, passages, min_share=self.settings.llm.min_quote_share)
        return None if quoted is None else quoted[1]

    @staticmethod
    def _not_found(prepared: Prepared, language: str, degenerate: str | None = None) -> Answer:
        """"Not in the documents", saying which names they never mention when that is why."""
        names = "、".join(prepared.unmentioned)
        why = UNMENTIONED[language].format(names=names) if names else ""
        return Answer(text=NOT_FOUND[language] + why, hits=prepared.hits, found=False, question=prepared.question,
                      search_query=prepared.search_query, degenerate=degenerate, unmentioned=prepared.unmentioned)

    @staticmethod
    def _answer(prepared: Prepared, found, degenerate: str | None = None) -> Answer:
        return Answer(text=found.text, citations=found.citations, hits=prepared.hits, found=True,
                      question=prepared.question, search_query=prepared.search_query, degenerate=degenerate,
                      unsupported=tuple(found.unsupported))


@lru_cache(maxsize=8)
def label_openers(tokenizer) -> tuple[int, ...]:
    """Tokens an answer may not start with: a bracket or a label a passage could carry. The 0.5B otherwise often
    answered with nothing but "[1]" or "资料2（来源…）"; made to start with content, it writes a sentence."""
    openers = {i for t, i in tokenizer.get_vocab().items() if t.lstrip("Ġ").startswith("[")}
    for label in ("资料", "【", "来源", "Passage"):
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        openers.update(ids[:1])  # none where a small vocabulary can't spell the label
    return tuple(sorted(openers))


def decode_options(settings: LLMSettings, loaded: LoadedModel) -> DecodeOptions:
    """How answers are decoded (the answer stage, and ``finetune eval`` so it measures the same answers). A remote
    model decodes on its server, which knows its own stop tokens; no token can be banned from here."""
    remote = getattr(loaded, "remote", False)
    return DecodeOptions(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                         top_p=settings.top_p, repetition_penalty=settings.repetition_penalty,
                         stop_ids=() if remote else stop_ids(loaded.model, loaded.tokenizer),
                         banned_first=() if remote else label_openers(loaded.tokenizer),
                         no_repeat_ngram=settings.no_repeat_ngram, stop_loops=True)


class AnswerStream:
    """Iterate for text pieces as they are generated; ``answer`` holds the final ``Answer`` afterwards."""

    def __init__(self, answerer: Answerer, prepared: Prepared):
        self.answerer = answerer
        self.prepared = prepared
        self.answer: Answer | None = None
        self.hits = prepared.hits

    def __iter__(self) -> Iterator[str]:
        if self.prepared.prompt is None:
            self.answer = self.answerer.finish(self.prepared, "")
            yield self.answer.text
            return
        answerer = self.answerer
        pieces: list[str] = []
        for piece in stream_from_compute_thread(answerer.loaded, lambda: answerer.generate(self.prepared.prompt)):
            pieces.append(piece)
            yield piece
        self.answer = self.answerer.finish(self.prepared, "".join(pieces))


def _answerer(settings: Settings, retriever=None, kb=None) -> Answerer:
    if retriever is not None:
        return Answerer(settings, retriever)
    return _kb_answerer(settings, None if kb is None else str(kb))


@lru_cache(maxsize=4)  # a few knowledge bases open at once; the oldest retriever is let go beyond that
def _kb_answerer(settings: Settings, kb: str | None) -> Answerer:
    from retrieval import open_retriever

    return Answerer(settings, open_retriever(settings, kb))


def answer(question: str, history: Sequence[dict] | None = None, *, settings: Settings, retriever=None,
           kb=None) -> Answer:
    """Answer ``question`` from the knowledge base (``retriever``, else ``kb`` path, else the configured one).
    ``history`` is the chat so far: ``[{"role": "user"|"assistant", "content": ...}, ...]``."""
    return _answerer(settings, retriever, kb).answer(question, history)


def stream_answer(question: str, history: Sequence[dict] | None = None, *, settings: Settings, retriever=None,
                  kb=None) -> AnswerStream:
    """Like ``answer`` but returns an ``AnswerStream``: iterate it for text pieces, then read ``.answer``."""
    return _answerer(settings, retriever, kb).stream(question, history)
