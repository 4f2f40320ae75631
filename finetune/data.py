"""Training data: instruction JSONL in, token ids with answer-only labels out.

A record is ``{"instruction", "input", "output"}`` (Alpaca style, as in ``../shared/eval/finetune``), optionally
with ``"passages"``: the passages the answer is grounded in (``source``, ``page_start``, ``page_end``, ``heading``,
``text``). Every record is formatted with the same grounded prompt the answer stage uses (``llm.prompts``), so the
adapter learns the task it will be asked to do, and only the answer tokens carry loss: the model is not trained to
reproduce the system prompt or the passages.

>>> rec = parse_record({"instruction": "什么是 Debian？", "input": "", "output": "一个发行版。"}, "x.jsonl", 1)
>>> rec.question, rec.output
('什么是 Debian？', '一个发行版。')
>>> is_question_heading("第一章 总则"), is_question_heading("3.1 什么是 Debian？")
(False, True)
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from kbcore.text import NUMERALS

IGNORE_INDEX = -100  # labels with this value carry no loss (PyTorch's cross_entropy default ignore_index)


class DataError(ValueError):
    """Bad training data; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class Passage:
    source: str
    page_start: int
    page_end: int
    heading: str
    text: str


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str
    passages: tuple[Passage, ...] | None = None  # None: not given (a knowledge base may supply them)
    origin: str = ""  # "file:line", for messages

    @property
    def question(self) -> str:
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction

    def to_json(self) -> dict:
        out = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if self.passages is not None:
            out["passages"] = [vars(p) for p in self.passages]
        return out


@dataclass
class LoadReport:
    path: Path
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: reason"


def parse_record(obj, path, line: int) -> Record:
    where = f"{path}:{line}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("instruction", "output"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise DataError(f"{where}: field {key!r} must be a non-empty string")
    if not isinstance(obj.get("input", ""), str):
        raise DataError(f"{where}: field 'input' must be a string")
    passages = None
    if "passages" in obj:
        try:
            passages = tuple(Passage(str(p["source"]), int(p.get("page_start", 1)), int(p.get("page_end", 1)),
                                     str(p.get("heading", "")), str(p["text"])) for p in obj["passages"])
        except (TypeError, KeyError, ValueError) as exc:
            raise DataError(f"{where}: bad 'passages' ({exc!r})") from None
    return Record(obj["instruction"].strip(), (obj.get("input") or "").strip(), obj["output"].strip(), passages,
                  where)


def read_jsonl(path: str | Path, *, strict: bool = False) -> LoadReport:
    """Records of an instruction JSONL file. Malformed lines are listed in ``problems`` and skipped, or with
    ``strict=True`` the first one raises ``DataError``. Blank lines are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    report = LoadReport(path)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            report.records.append(parse_record(obj, path, number))
        except DataError as exc:
            if strict:
                raise
            report.problems.append(str(exc))
    if not report.records:
        raise DataError(f"{path}: no usable records" + (f" ({len(report.problems)} malformed lines)"
                                                        if report.problems else ""))
    return report


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def data_sha256(records: Sequence[Record]) -> str:
    """Identifies the training data (order and content), for the adapter's metadata."""
    digest = hashlib.sha256()
    for rec in records:
        digest.update(json.dumps(rec.to_json(), ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def mix_general(records: list[Record], general: Sequence[Record], ratio: float, seed: int) -> list[Record]:
    """Domain records plus ``ratio`` as many general ones (sampled), shuffled: general data against forgetting."""
    rng = random.Random(seed)
    extra = rng.sample(list(general), min(len(general), round(len(records) * ratio)))
    mixed = list(records) + extra
    rng.shuffle(mixed)
    return mixed


# ---------------------------------------------------------------- from a knowledge base

_QUESTION = re.compile(r"[？?]\s*$|什么|为什么|如何|怎样|怎么|哪些|哪里|是否|吗")
_NUMBERING = re.compile(rf"^\s*(?:第?[0-9{NUMERALS}]+(?:\.[0-9]+)*[章节条、.]?\s*)")


def is_question_heading(heading: str) -> bool:
    """Whether the last part of a heading path reads as a question (FAQ-like structure)."""
    last = heading.split(" > ")[-1].strip()
    return bool(last) and bool(_QUESTION.search(last))


def _question_text(heading: str) -> str:
    return _NUMBERING.sub("", heading.split(" > ")[-1]).strip()


def _passage(chunk) -> Passage:
    return Passage(chunk.source, chunk.page_start, chunk.page_end, chunk.heading, chunk.text)


class PassageMatcher:
    """The best-matching chunks of a knowledge base for a question, by BM25 over the stored search tokens
    (lexical, so building training data needs no embedding model)."""

    def __init__(self, kb):
        from rank_bm25 import BM25Okapi

        ids, tokens = kb.search_tokens()
        by_id = kb.get_chunks(ids.tolist())
        self.chunks = [by_id[int(i)] for i in ids]
        self._tokens = [t.split() or ["∅"] for t in tokens]
        self._bm25 = BM25Okapi(self._tokens)

    def scores(self, question: str):
        from kbcore.text import search_tokens

        return self._bm25.get_scores(search_tokens(question))

    def best(self, question: str, k: int = 2) -> list[Passage]:
        scores = self.scores(question)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
        return [_passage(self.chunks[i]) for i in order]

    def unrelated(self, question: str, rng: random.Random, k: int = 2, exclude_source: str = "") -> list[Passage]:
        """Passages that cannot answer the question: chunks of other documents sharing none of its search words
        (else the lowest-scoring ones of other documents)."""
        from kbcore.text import search_tokens

        words = set(search_tokens(question))
        others = [i for i, c in enumerate(self.chunks) if c.source != exclude_source] or list(range(len(self.chunks)))
        pool = [i for i in others if not words & set(self._tokens[i])]
        if len(pool) < k:
            scores = self.scores(question)
            pool = sorted(others, key=lambda i: scores[i])[: max(k, len(others) // 2)]
        return [_passage(self.chunks[i]) for i in rng.sample(pool, min(k, len(pool)))]


def build_from_kb(kb, *, refusal_ratio: float = 0.25, max_answer_chars: int = 600, seed: int = 42) -> list[Record]:
    """Question/answer records from a knowledge base's FAQ-like structure.

    Each chunk under a heading that is a question gives a record: the question, its chunk (plus one other
    passage, so the model learns to pick the right one) as passages, and the chunk's text as the answer, cited.
    ``refusal_ratio`` of them are repeated with only unrelated passages and the refusal as the answer.
    """
    from llm.prompts import NOT_FOUND

    rng = random.Random(seed)
    matcher = PassageMatcher(kb)
    seen: set[str] = set()
    records: list[Record] = []
    questions: list[tuple[str, str]] = []
    for chunk in matcher.chunks:
        if not is_question_heading(chunk.heading) or chunk.heading in seen or len(chunk.text) < 20:
            continue
        seen.add(chunk.heading)  # the first chunk under a heading starts its answer
        question = _question_text(chunk.heading)
        gold = _passage(chunk)
        other = [p for p in matcher.best(question, k=3) if p.text != chunk.text][:1]
        passages = [gold] + other
        rng.shuffle(passages)
        cite = passages.index(gold) + 1
        answer = chunk.text.strip()[:max_answer_chars].rstrip() + f" [{cite}]"
        records.append(Record(question, "", answer, tuple(passages), f"kb:{chunk.source}:{chunk.page_start}"))
        questions.append((question, chunk.source))
    for question, source in rng.sample(questions, round(len(questions) * refusal_ratio)):
        passages = matcher.unrelated(question, rng, exclude_source=source)
        records.append(Record(question, "", NOT_FOUND["zh"], tuple(passages), f"kb-refusal:{source}"))
    rng.shuffle(records)
    return records


_CITATION = re.compile(r"\[\d+\]")


def attach_passages(records: Sequence[Record], kb, k: int = 2) -> list[Record]:
    """Records without passages get the ``k`` best-matching chunks of ``kb`` (what retrieval would show).

    An answer that copies one of them gets that passage's ``[n]`` appended (the answer stage's own overlap
    rule decides), so an adapter trained on plain instruction pairs keeps citing: trained without it, the
    grounded FAQ adapter answered in the documents' words but with no [n] at all."""
    from llm.citations import supporting_passage

    matcher = PassageMatcher(kb)
    out = []
    for r in records:
        if r.passages is not None:
            out.append(r)
            continue
        passages = tuple(matcher.best(r.question, k))
        output = r.output
        cited = None if _CITATION.search(output) else supporting_passage(output, _hits(passages))
        if cited is not None:
            output = f"{output} [{cited}]"
        out.append(Record(r.instruction, r.input, output, passages, r.origin))
    return out


# ---------------------------------------------------------------- tokenising

@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt, the token id on answer tokens

    @property
    def answer_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _hits(passages: Sequence[Passage]):
    from kbcore.types import Chunk, Hit

    return [Hit(Chunk(0, 0, p.source, i, p.page_start, p.page_end, p.heading, p.text), 0.0)
            for i, p in enumerate(passages)]


def prompt_text(tokenizer, record: Record, passage_texts: Sequence[str] | None = None) -> str:
    """The grounded prompt for a record, exactly as the answer stage renders it."""
    from llm.prompts import build_messages, render_prompt

    passages = record.passages or ()
    return render_prompt(tokenizer, build_messages(record.question, _hits(passages), passage_texts=passage_texts))


def encode(tokenizer, record: Record, max_seq_length: int) -> Encoded:
    """Prompt + answer + end-of-turn token, labels only on the answer and the end-of-turn token.

    Too long: the answer keeps at most half the budget, then passages are shortened (their tail goes first) until
    the prompt fits; a prompt still too long loses its start (the question and the assistant turn stay).
    """
    answer = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer = answer[: max(max_seq_length // 2, max_seq_length - _prompt_len(tokenizer, record, None))]
    budget = max_seq_length - len(answer)
    texts = [p.text for p in record.passages or ()]
    prompt = tokenizer(prompt_text(tokenizer, record, texts), add_special_tokens=False)["input_ids"]
    while len(prompt) > budget and any(texts):
        texts = [t[: int(len(t) * 0.7)] for t in texts]
        prompt = tokenizer(prompt_text(tokenizer, record, texts), add_special_tokens=False)["input_ids"]
    prompt = prompt[-budget:] if len(prompt) > budget else prompt
    return Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)


def _prompt_len(tokenizer, record: Record, texts) -> int:
    return len(tokenizer(prompt_text(tokenizer, record, texts), add_special_tokens=False)["input_ids"])


def encode_all(tokenizer, records: Sequence[Record], max_seq_length: int) -> list[Encoded]:
    return [encode(tokenizer, r, max_seq_length) for r in records]
