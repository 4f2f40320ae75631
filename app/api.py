"""kbchat as an HTTP service: ``python -m app.api [--host H] [--port P]`` (FastAPI on uvicorn).

OpenAI-compatible, so the official clients work unchanged (``base_url=http://127.0.0.1:8000/v1``):

- ``GET /v1/models``: one model per knowledge base, named as it is; ``<kb>:<adapter>`` for each adapter trained on
  the configured model; then the model itself (``llm.model``), each adapter by its bare name, and the embedding
  model (``embedding.model``).
- ``POST /v1/chat/completions``: the grounded answer to the last user message, earlier turns as history; streamed
  as server-sent events with ``stream: true``. The checked answer's citations, and whether the documents hold an
  answer at all, travel in the extension field ``kbchat`` (on the completion, or on the stream's last chunk).
  Asked for the model itself (or an adapter by its name, as vLLM serves LoRA modules), it is a plain model server:
  the messages go through the model's chat template, as another kbchat's ``llm.backend = "openai"`` sends them.
- ``POST /v1/embeddings``: the knowledge base's embedding model; a text that already starts with the model's
  query or passage prefix (as another kbchat's ``embedding.backend = "openai"`` sends it) is embedded as it is.

Knowledge-base management lives outside ``/v1`` (``/kbs``, ``/jobs``), ``GET /health`` says whether the model is
loaded and the model servers the settings name answer, and ``/docs`` is the OpenAPI page. Everything a request
does is a call into ``app.service`` and ``app.state``, the same functions the Streamlit app calls.

Why the checks sit where they do: one model serves every request and generates one answer at a time (the compute
thread, ``kbcore.compute``), so chat requests wait in a bounded queue here, served in turn per client, where a
client that hangs up can still be taken out before it costs any compute; a hung-up stream stops its generation
at the next token. Importing this module loads no model: ``create_app`` builds the app, and the model loads when
the server starts (``api.preload``) or on the first question.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import sys
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Iterable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from app import service, state
from kbcore.config import Settings, load_settings

log = logging.getLogger("kbchat.api")

# Paths anyone may read without a key: liveness probes and the API's own description hold no data.
OPEN_PATHS = ("/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
UPLOAD_SUFFIX = "/documents"
# How long ``?wait=true`` on an upload holds the request before answering 202 with the job to poll.
UPLOAD_WAIT_SECONDS = 300


# ---------------------------------------------------------------- errors in OpenAI's format
class ApiError(HTTPException):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``, the shape OpenAI clients parse."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.param, self.code = param, code


_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "param", None),
                              getattr(exc, "code", None), exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            first = next(e for e in errors if e.get("type") == "json_invalid")
            where = first.get("ctx", {}).get("error", "")
            return error_response(400, f"the request body is not valid JSON ({where}); send one JSON object",
                                  code="invalid_json")
        parts, param = [], None
        for e in errors:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            param = param or loc or None
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        return error_response(422, "; ".join(parts), param, "invalid_value")

    @api.exception_handler(state.UnknownKnowledgeBase)
    async def unknown_kb(request: Request, exc: state.UnknownKnowledgeBase):
        return error_response(404, str(exc), "model" if request.url.path.startswith("/v1/") else None,
                              "model_not_found")

    @api.exception_handler(state.AppInputError)
    async def bad_input(request: Request, exc: state.AppInputError):
        return error_response(422, str(exc), code="invalid_value")

    @api.exception_handler(service.JobsFull)
    async def jobs_full(request: Request, exc: service.JobsFull):
        return error_response(429, str(exc), code="too_many_jobs", headers={"Retry-After": "10"})

    from kbcore.store import EmbeddingMismatchError, KnowledgeBaseBusyError, KnowledgeBaseError

    @api.exception_handler(KnowledgeBaseBusyError)
    async def busy(request: Request, exc: KnowledgeBaseBusyError):
        return error_response(409, str(exc), code="kb_busy", headers={"Retry-After": "5"})

    @api.exception_handler(EmbeddingMismatchError)
    async def mismatch(request: Request, exc: EmbeddingMismatchError):
        return error_response(409, str(exc), code="embedding_mismatch")

    @api.exception_handler(KnowledgeBaseError)
    async def kb_error(request: Request, exc: KnowledgeBaseError):
        return error_response(409, str(exc), code="kb_error")


# ---------------------------------------------------------------- keys and body sizes, before any route runs
class BodyTooLarge(ApiError):
    def __init__(self, limit: int, setting: str):
        super().__init__(413, f"the request body is over this server's limit of {limit:,} bytes ({setting}); "
                              f"send less", code="body_too_large")


class Guard:
    """Refuses a request without a valid key (401) and a body over its limit (413) before any route reads it:
    by its Content-Length when sent, else by counting the bytes as they arrive."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.keys = [k.encode() for k in settings.api.api_keys]
        self.json_limit = settings.api.max_body_kb * 1024
        self.upload_limit = settings.api.max_upload_request_mb * 2**20

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = dict(scope["headers"])
        if self.keys and path not in OPEN_PATHS and not self._authorised(headers.get(b"authorization", b"")):
            response = error_response(401, "missing or wrong API key: send the header 'Authorization: Bearer "
                                           "<key>' with a key from api.api_keys", code="invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        upload = scope["method"] == "POST" and path.startswith("/kbs/") and path.endswith(UPLOAD_SUFFIX)
        limit, setting = ((self.upload_limit, "api.max_upload_request_mb") if upload else
                          (self.json_limit, "api.max_body_kb"))
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await error_response(413, BodyTooLarge(limit, setting).detail, code="body_too_large")(
                scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        await self.app(scope, counted, send)

    def _authorised(self, header: bytes) -> bool:
        scheme, _, key = header.partition(b" ")
        # compare_digest against every key: how long a wrong key takes says nothing about the right ones
        return scheme.lower() == b"bearer" and any([hmac.compare_digest(key.strip(), k) for k in self.keys])


# ---------------------------------------------------------------- the generation queue
class QueueFull(ApiError):
    def __init__(self, waiting: int):
        super().__init__(429, f"{waiting} questions are already waiting for the model (api.max_queued); "
                              f"try again shortly", code="queue_full", headers={"Retry-After": "2"})


class FairQueue:
    """One generation at a time; the waiting ones are served in turn per client (round robin), so one client's
    burst does not make everyone else wait behind all of it. Runs on the event loop only: no locks."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.busy = False
        self._queues: dict[str, deque[asyncio.Future]] = {}
        self._turns: deque[str] = deque()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def enter(self, client: str) -> asyncio.Future:
        """A future that completes when it is this request's turn; ``QueueFull`` when too many wait already."""
        turn = asyncio.get_running_loop().create_future()
        if not self.busy and not self._turns:
            self.busy = True
            turn.set_result(None)
            return turn
        if self.waiting >= self.max_waiting:
            raise QueueFull(self.waiting)
        self._queues.setdefault(client, deque()).append(turn)
        if client not in self._turns:
            self._turns.append(client)
        return turn

    def leave(self) -> None:
        """The running generation has finished: hand the model to the next client in turn."""
        while self._turns:
            client = self._turns.popleft()
            queue = self._queues[client]
            turn = queue.popleft()
            if queue:
                self._turns.append(client)  # its next request waits for everyone else's turn
            else:
                del self._queues[client]
            if not turn.done():
                turn.set_result(None)
                return
        self.busy = False

    def abandon(self, client: str, turn: asyncio.Future) -> None:
        """The request went away before or just as its turn came."""
        if turn.done() and not turn.cancelled():
            self.leave()  # the turn was already handed to it: pass it on
            return
        queue = self._queues.get(client)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self._queues[client]
                self._turns.remove(client)


# ---------------------------------------------------------------- request bodies
class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat request; fields it does not use are ignored, as OpenAI ignores unknown ones."""

    model: str = Field(description="the knowledge base to ask, or <kb>:<adapter> (see GET /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="one answer per request")


class EmbeddingRequest(BaseModel):
    model: str = Field(description="a knowledge base (its embedding model) or the embedding model's name")
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    # e5-style models embed questions and passages with different prefixes; OpenAI has no such field. A text that
    # starts with either prefix already is embedded as that kind, whatever this says.
    input_type: Literal["query", "passage"] = "passage"


class NewKnowledgeBase(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class SearchRequest(BaseModel):
    query: str = Field(min_length=1)
    k: int = Field(5, ge=1, le=50)


# ---------------------------------------------------------------- the app
class Server:
    """What the routes share: the settings, the generation queue, ingest jobs and counters."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.queue = FairQueue(settings.api.max_queued)
        self.jobs = service.IngestJobs(settings.api.max_ingest_jobs)
        # Answers are prepared (retrieval: FAISS, BM25) and streamed on this one thread, as a script would on its
        # main thread: every thread that runs OpenMP work gets a pool of its own (kbcore.compute). The queue lets
        # one in at a time; a stopped one may hold it a token's time longer.
        self.workers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbchat-answer")
        self.counts = {"served": 0, "cancelled": 0, "failed": 0}
        self.model_error: str | None = None
        self.loading = False

    # ------------------------------------------------------------ models and knowledge bases
    def kb_path(self, name: str) -> Path:
        return state.existing_kb(self.settings.kb_root, name)

    def adapters(self) -> list[str]:
        """Adapter folders trained on the configured model (engine.adapters refuses others at load)."""
        from engine.adapters import list_adapters
        from engine.models import model_fingerprint

        base = model_fingerprint(self.settings.llm)
        try:
            found = list_adapters(self.settings.adapters_dir)
        except Exception as exc:  # one unreadable adapter folder must not hide the knowledge bases
            log.warning("cannot list adapters in %s: %s", self.settings.adapters_dir, exc)
            return []
        return [a.path.name for a in found if not a.base_model_sha256 or a.base_model_sha256 == base]

    def bare_model(self, model: str) -> Settings | None:
        """Settings for chatting with the model itself, no knowledge base: ``model`` is ``llm.model``, or an
        adapter's name (vLLM's naming of LoRA modules); None otherwise, and for a knowledge base of that name."""
        if not model or ":" in model:
            return None
        try:
            self.kb_path(model)
            return None  # a knowledge base's name is that knowledge base
        except state.AppInputError:  # not a knowledge-base name, or none has it
            pass
        if model == self.settings.llm.model:
            return self.settings
        if model in self.adapters():
            return self.settings.with_overrides(llm={"adapter": model})
        return None

    def resolve_model(self, model: str) -> tuple[str, Path, Settings]:
        """(knowledge base, its folder, settings with the adapter) for a chat request's ``model``."""
        kb, _, adapter = model.partition(":")
        try:
            path = self.kb_path(kb)
        except state.UnknownKnowledgeBase:
            raise ApiError(404, f"no model {model!r}: ask a knowledge base by its name (GET /v1/models lists them)",
                           param="model", code="model_not_found") from None
        except state.AppInputError as exc:
            raise ApiError(404, f"no model {model!r}: {exc}", param="model", code="model_not_found") from None
        settings = self.settings
        if adapter:
            if adapter not in self.adapters():
                raise ApiError(404, f"no adapter {adapter!r} for model {model!r} (available: "
                                    f"{', '.join(self.adapters()) or 'none'})", param="model", code="model_not_found")
            settings = settings.with_overrides(llm={"adapter": adapter})
        from kbcore.store import KnowledgeBase

        if not KnowledgeBase.exists(path):
            raise ApiError(409, f"knowledge base {kb!r} has no documents yet: upload some with "
                                f"POST /kbs/{kb}/documents", param="model", code="kb_empty")
        return kb, path, settings

    def preload(self) -> None:
        self.loading = True
        try:
            service.get_model(self.settings)
        except Exception as exc:  # the server stays up to say why; questions retry the load
            self.model_error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the model: %s", self.model_error)
        finally:
            self.loading = False

    # ------------------------------------------------------------ one answer, on a worker thread
    def answer_in_thread(self, ticket: "Ticket", stop: threading.Event, emit) -> None:
        """Prepare, generate and check one answer, sending ("piece", text) as tokens come and ("answer", (Answer,
        usage)) at the end; returns early, its generation closed, once ``stop`` is set."""
        if ticket.messages is not None:
            return self.chat_in_thread(ticket, stop, emit)
        try:
            answerer = service.answerer(ticket.settings, ticket.kb_path)
            stream = answerer.stream(ticket.question, ticket.history, k=ticket.settings.retrieval.top_k)
            draft = _relay(stream, stop, emit)
            if draft is None:
                return
            tokenizer = answerer.loaded.tokenizer
            prompt = stream.prepared.prompt
            prompt_tokens = len(tokenizer(prompt)["input_ids"]) if prompt else 0
            completion_tokens = len(tokenizer("".join(draft), add_special_tokens=False)["input_ids"]) if prompt else 0
            emit("answer", (stream.answer, {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                            "total_tokens": prompt_tokens + completion_tokens}))
        except Exception as exc:
            log.exception("answer failed")
            emit("error", exc)
        finally:
            emit("end", None)

    def chat_in_thread(self, ticket: "Ticket", stop: threading.Event, emit) -> None:
        """The model's own reply to ``ticket.messages`` (its chat template, the answer stage's decoding), sent like
        ``answer_in_thread`` sends an answer, with the reply's text in place of the ``Answer``."""
        from engine.generate import generate, stream_from_compute_thread
        from llm.answerer import decode_options
        from llm.prompts import render_prompt

        try:
            loaded = service.get_model(ticket.settings)
            prompt = render_prompt(loaded.tokenizer, ticket.messages)
            prompt_tokens = len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            limit = ticket.settings.llm.max_prompt_tokens
            if prompt_tokens > limit:
                raise ApiError(400, f"the messages are {prompt_tokens:,} tokens, over this server's limit of "
                                    f"{limit:,} (llm.max_prompt_tokens): send fewer or shorter ones",
                               param="messages", code="context_length_exceeded")
            options = decode_options(ticket.settings.llm, loaded)
            draft = _relay(stream_from_compute_thread(loaded, lambda: generate(loaded, prompt, options)), stop, emit)
            if draft is None:
                return
            text = "".join(draft)
            completion_tokens = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
            emit("answer", (text, {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}))
        except ApiError as exc:
            emit("error", exc)
        except Exception as exc:
            log.exception("generation failed")
            emit("error", exc)
        finally:
            emit("end", None)

    def enter(self, body: ChatRequest, client: str) -> "Ticket":
        """Check a chat request's limits and take its place in the queue: every refusal (4xx, 429) happens here,
        before any response starts."""
        bare = self.bare_model(body.model)
        if bare is not None:
            settings, messages = self.prepare_chat(body, bare)
            return Ticket(self.queue, client, self.queue.enter(client), settings, None, "", [], messages)
        settings, kb_path, question, history = self.prepare_request(body)
        return Ticket(self.queue, client, self.queue.enter(client), settings, kb_path, question, history)

    async def run(self, ticket: "Ticket"):
        """Async events of one answer: ("piece", text)... then ("answer", (Answer, usage)) or ("error", exc). Waits
        its turn first; leaving early (a cancelled task, a closed generator) stops the generation."""
        ticket.used = True
        try:
            await ticket.turn
        except BaseException:
            self.queue.abandon(ticket.client, ticket.turn)
            self.counts["cancelled"] += 1
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        outcome: list[str] = []

        def emit(kind, value):
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        try:
            work = loop.run_in_executor(self.workers, self.answer_in_thread, ticket, stop, emit)
        except BaseException:
            self.queue.leave()
            raise
        # The model is free only when the thread is: then the next one in turn may start.
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self.queue.leave))
        try:
            while True:
                kind, value = await events.get()
                if kind == "end":
                    return
                if kind in ("answer", "error"):
                    outcome.append(kind)
                    if kind == "answer" or not isinstance(value, ApiError):  # a refused request is no failure
                        self.counts["served" if kind == "answer" else "failed"] += 1
                yield kind, value
        finally:
            if not outcome:
                stop.set()
                self.counts["cancelled"] += 1

    def prepare_chat(self, body: ChatRequest, settings: Settings) -> tuple[Settings, list[dict]]:
        """The settings and messages of a chat with the model itself (``bare_model``), every limit checked that can
        be before the model is loaded (the prompt's length is checked by ``chat_in_thread``)."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, i)}
                    for i, m in enumerate(body.messages)]
        for i, m in enumerate(messages):
            if m["role"] not in ("system", "user", "assistant"):
                raise ApiError(422, f"messages.{i}.role: {m['role']!r} messages are not supported; send system, "
                                    f"user and assistant ones", param=f"messages.{i}.role", code="invalid_value")
        if messages[-1]["role"] != "user":
            raise ApiError(422, "the last message must be the user's", param="messages", code="invalid_value")
        return self.request_settings(body, settings), messages

    def request_settings(self, body: ChatRequest, settings: Settings) -> Settings:
        """``settings`` with the request's decoding fields (max_tokens held to api.max_tokens)."""
        api = self.settings.api
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None and max_tokens > api.max_tokens:
            field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(422, f"{field} is {max_tokens}, over this server's limit of {api.max_tokens} "
                                f"(api.max_tokens)", param=field, code="invalid_value")
        llm: dict[str, Any] = {}
        if max_tokens is not None:
            llm["max_new_tokens"] = max_tokens
        if body.temperature is not None:
            llm["temperature"] = body.temperature
        if body.top_p is not None:
            llm["top_p"] = body.top_p
        return settings.with_overrides(llm=llm) if llm else settings

    def prepare_request(self, body: ChatRequest) -> tuple[Settings, Path, str, list[dict]]:
        """The settings, knowledge base, question and history of a chat request, every limit checked."""
        api = self.settings.api
        _, kb_path, settings = self.resolve_model(body.model)
        turns = [(m.role, message_text(m, i)) for i, m in enumerate(body.messages)]
        if turns[-1][0] != "user" or not turns[-1][1].strip():
            raise ApiError(422, "the last message must be the user's question, with text", param="messages",
                           code="invalid_value")
        question = turns[-1][1]
        if len(question) > api.max_question_chars:
            raise ApiError(422, f"the question is {len(question):,} characters, over this server's limit of "
                                f"{api.max_question_chars:,} (api.max_question_chars)",
                           param=f"messages.{len(turns) - 1}.content", code="question_too_long")
        history = [{"role": r, "content": t} for r, t in turns[:-1] if r in ("user", "assistant")]
        return self.request_settings(body, settings), kb_path, question, history


class Ticket:
    """A chat request's checked inputs and its place in the queue. ``cancel`` gives the place back when the answer
    never started (a client gone before its stream began); once started, ``Server.run`` owns it."""

    def __init__(self, queue: FairQueue, client: str, turn: asyncio.Future, settings: Settings, kb_path: Path | None,
                 question: str, history: list[dict], messages: list[dict] | None = None):
        self.queue, self.client, self.turn = queue, client, turn
        self.settings, self.kb_path, self.question, self.history = settings, kb_path, question, history
        # A chat with the model itself (Server.bare_model): its messages, and no knowledge base.
        self.messages = messages
        self.used = False

    def cancel(self) -> None:
        if not self.used:
            self.used = True
            self.queue.abandon(self.client, self.turn)


class AnswerStreamResponse(StreamingResponse):
    """A stream that gives its queue place back even when it is cut off before its first byte."""

    def __init__(self, content, ticket: Ticket, **kwargs):
        super().__init__(content, **kwargs)
        self.ticket = ticket

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Cut off while sending a chunk, the stream was left at a yield rather than cancelled inside: close it
            # now so its generation stops, instead of whenever the garbage collector finalises it.
            await self.body_iterator.aclose()
            self.ticket.cancel()


def message_text(message: ChatMessage, index: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(422, f"messages.{index}.content: only text parts are supported (got {part.get('type')!r})",
                           param=f"messages.{index}.content", code="invalid_value")
        texts.append(part["text"])
    return "\n".join(texts)


def _relay(pieces: Iterable[str], stop: threading.Event, emit) -> list[str] | None:
    """Emit each piece as it comes and return them all; None once the client has gone (``stop``). Closing the
    stream stops the generation on the compute thread at its next token."""
    draft: list[str] = []
    pieces = iter(pieces)
    try:
        for piece in pieces:
            if stop.is_set():
                return None
            draft.append(piece)
            emit("piece", piece)
    finally:
        pieces.close()
    return draft


def client_of(request: Request) -> str:
    """Whom the fair queue takes turns between: the API key when keys are on, else the caller's address."""
    header = request.headers.get("authorization", "")
    if header:
        return hashlib.sha256(header.encode()).hexdigest()[:16]
    return request.client.host if request.client else "?"


def _chunk(cid: str, created: int, model: str, delta: dict, finish: str | None = None, **extra) -> str:
    payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _finish_reason(usage: dict, ticket: Ticket) -> str:
    return "length" if usage["completion_tokens"] >= ticket.settings.llm.max_new_tokens else "stop"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app over ``settings`` (default: ``load_settings()``); nothing is loaded until it starts."""
    settings = settings or load_settings()
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(api: FastAPI):
        if settings.api.preload:
            threading.Thread(target=server.preload, name="kbchat-preload", daemon=True).start()
        yield
        server.workers.shutdown(wait=False, cancel_futures=True)

    api = FastAPI(title="kbchat", version="1", lifespan=lifespan,
                  description="An OpenAI-compatible API over local knowledge bases: grounded, cited answers.")
    api.state.server = server
    _install_error_handlers(api)
    api.add_middleware(Guard, settings=settings)

    # ------------------------------------------------------------ health
    @api.get("/health", tags=["service"])
    def health():
        """Liveness (it answers) and readiness (``ready``: the model is loaded, and every OpenAI-compatible server
        the settings use answers and serves the model asked for: ``upstream``)."""
        upstream = service.upstreams(settings)
        ready = service.model_is_loaded(settings) and all(u["served"] for u in upstream.values())
        return {"status": "ok", "ready": ready, "upstream": upstream, "model": settings.llm.model,
                "loading": server.loading, "model_error": server.model_error,
                "generations": {"running": int(server.queue.busy), "queued": server.queue.waiting, **server.counts},
                "ingest_jobs": server.jobs.pending()}

    # ------------------------------------------------------------ OpenAI: models
    def model_cards() -> list[dict]:
        cards = []
        adapters = server.adapters()
        for kb in state.list_kbs(settings.kb_root):
            created = int((settings.kb_root / kb).stat().st_mtime)
            cards.append({"id": kb, "object": "model", "created": created, "owned_by": "kbchat"})
            cards += [{"id": f"{kb}:{a}", "object": "model", "created": created, "owned_by": "kbchat"}
                      for a in adapters]
        # The model itself and its adapters, for clients that bring their own passages (Server.bare_model), and the
        # embedding model by its name.
        cards += [{"id": name, "object": "model", "created": 0, "owned_by": "kbchat"}
                  for name in (settings.llm.model, *adapters) if server.bare_model(name) is not None]
        if all(card["id"] != settings.embedding.model for card in cards):
            cards.append({"id": settings.embedding.model, "object": "model", "created": 0, "owned_by": "kbchat"})
        return cards

    @api.get("/v1/models", tags=["openai"])
    def list_models():
        return {"object": "list", "data": model_cards()}

    @api.get("/v1/models/{model}", tags=["openai"])
    def get_model(model: str):
        for card in model_cards():
            if card["id"] == model:
                return card
        raise ApiError(404, f"no model {model!r} (GET /v1/models lists them)", param="model", code="model_not_found")

    # ------------------------------------------------------------ OpenAI: chat
    @api.post("/v1/chat/completions", tags=["openai"])
    async def chat(body: ChatRequest, request: Request):
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        ticket = server.enter(body, client_of(request))
        events = server.run(ticket)
        if body.stream:
            return AnswerStreamResponse(_sse(events, ticket, cid, created, body), ticket,
                                        media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(request, events, ticket, cid, created, body.model)

    async def _sse(events, ticket: Ticket, cid: str, created: int, body: ChatRequest):
        model = body.model
        yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
        try:
            async for kind, value in events:
                if kind == "piece":
                    yield _chunk(cid, created, model, {"content": value})
                elif kind == "error":
                    if isinstance(value, ApiError):
                        error = {"message": value.detail, "type": "invalid_request_error", "param": value.param,
                                 "code": value.code}
                    else:
                        error = {"message": f"the answer failed: {value}", "type": "server_error", "param": None,
                                 "code": "generation_failed"}
                    yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
                elif kind == "answer" and isinstance(value[0], str):  # the model itself: no answer checks
                    yield _chunk(cid, created, model, {}, _finish_reason(value[1], ticket))
                    if body.stream_options and body.stream_options.include_usage:
                        payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                   "choices": [], "usage": value[1]}
                        yield f"data: {json.dumps(payload)}\n\n"
                elif kind == "answer":
                    answer, usage = value
                    # The stream carried the model's draft; the checked answer (citation marks, or a quote or
                    # "not found" in place of an unusable draft) comes with the citations.
                    yield _chunk(cid, created, model, {}, _finish_reason(usage, ticket),
                                 kbchat={"text": answer.text, **service.answer_fields(answer)})
                    if body.stream_options and body.stream_options.include_usage:
                        payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                   "choices": [], "usage": usage}
                        yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()

    async def _complete(request: Request, events, ticket: Ticket, cid: str, created: int, model: str):
        async def collect():
            async for kind, value in events:
                if kind == "error":
                    if isinstance(value, ApiError):
                        raise value
                    raise ApiError(500, f"the answer failed: {value}", code="generation_failed")
                if kind == "answer":
                    return value
            raise ApiError(500, "the answer ended without a result", code="generation_failed")

        async def hung_up():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(hung_up())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client left: stop its generation, or take it out of the queue
                work.cancel()
                await asyncio.wait({work})
            ticket.cancel()
            await events.aclose()
        if work.cancelled():
            return error_response(499, "the client closed the connection", code="client_closed")
        answer, usage = work.result()
        if isinstance(answer, str):  # the model itself (Server.bare_model): its reply, no kbchat field
            return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "logprobs": None,
                                 "finish_reason": _finish_reason(usage, ticket)}], "usage": usage}
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "logprobs": None, "finish_reason": _finish_reason(usage, ticket)}],
                "usage": usage, "kbchat": service.answer_fields(answer)}

    # ------------------------------------------------------------ OpenAI: embeddings
    @api.post("/v1/embeddings", tags=["openai"])
    def embeddings(body: EmbeddingRequest):
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        api_limits = settings.api
        if not texts or len(texts) > api_limits.max_embedding_inputs:
            raise ApiError(422, f"input holds {len(texts)} texts; send 1 to {api_limits.max_embedding_inputs} "
                                f"(api.max_embedding_inputs)", param="input", code="invalid_value")
        for i, text in enumerate(texts):
            if not text.strip() or len(text) > api_limits.max_question_chars:
                raise ApiError(422, f"input[{i}] is {len(text):,} characters; send 1 to "
                                    f"{api_limits.max_question_chars:,} (api.max_question_chars)",
                               param=f"input.{i}", code="invalid_value")
        if body.model == settings.embedding.model:
            from kbcore.embedding import load_embedder

            embedder = load_embedder(settings.embedding, settings.cache_dir)
        else:
            try:
                embedder = service.get_retriever(settings, server.kb_path(body.model)).embedder
            except (state.AppInputError, FileNotFoundError):
                raise ApiError(404, f"no model {body.model!r}: name a knowledge base or "
                                    f"{settings.embedding.model!r}", param="model", code="model_not_found") from None
        import numpy as np

        from kbcore.embedding import resolve_prefixes

        # A text already prefixed (another kbchat's openai backend adds the prefixes, as every e5 client should) is
        # embedded as that kind, without a second prefix.
        query_prefix, passage_prefix = resolve_prefixes(settings.embedding)
        queries, bare = [], []
        for text in texts:
            if query_prefix and text.startswith(query_prefix):
                queries.append(True)
                bare.append(text[len(query_prefix):])
            elif passage_prefix and text.startswith(passage_prefix):
                queries.append(False)
                bare.append(text[len(passage_prefix):])
            else:
                queries.append(body.input_type == "query")
                bare.append(text)
        vectors = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
        passages = [i for i, query in enumerate(queries) if not query]
        if passages:
            vectors[passages] = embedder.embed_passages([bare[i] for i in passages])
        for i in (i for i, query in enumerate(queries) if query):
            vectors[i] = embedder.embed_query(bare[i])
        data = []
        for i, vector in enumerate(vectors):
            vector = vector.astype("<f4")
            value = base64.b64encode(vector.tobytes()).decode() if body.encoding_format == "base64" else vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        # Token counts would need the embedder's tokenizer; characters are what the limits count.
        chars = sum(len(t) for t in texts)
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": chars, "total_tokens": chars}}

    # ------------------------------------------------------------ knowledge bases
    def kb_row(name: str) -> dict:
        docs = state.kb_documents(settings.kb_root / name)
        return {"name": name, "documents": len(docs), "chunks": sum(d["chunks"] for d in docs)}

    @api.get("/kbs", tags=["knowledge bases"])
    def list_kbs():
        """Every knowledge base with its document and chunk counts."""
        return {"kbs": [kb_row(n) for n in state.list_kbs(settings.kb_root)]}

    @api.post("/kbs", status_code=201, tags=["knowledge bases"])
    def create_kb(body: NewKnowledgeBase):
        """Create an empty knowledge base; its name is made safe (letters, digits, '-', '_') and returned."""
        name = state.create_kb_folder(settings.kb_root, body.name)
        return kb_row(name)

    @api.delete("/kbs/{kb}", tags=["knowledge bases"])
    def delete_kb(kb: str):
        """Delete a knowledge base with its documents and stored uploads (409 while an ingest is on it)."""
        path = server.kb_path(kb)
        if server.jobs.busy(kb):
            raise ApiError(409, f"an ingest job is running or waiting on {kb!r}; delete it when the job is done "
                                f"(GET /jobs/<id>)", code="kb_busy")
        service.retrievers.forget(path)
        state.delete_kb(settings.kb_root, kb)
        return {"deleted": kb}

    @api.get("/kbs/{kb}/documents", tags=["knowledge bases"])
    def list_documents(kb: str):
        return {"kb": kb, "documents": state.kb_documents(server.kb_path(kb))}

    @api.post("/kbs/{kb}/documents", status_code=202, tags=["knowledge bases"],
              openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                  "type": "object", "properties": {"files": {"type": "array", "items": {
                      "type": "string", "format": "binary"}}}, "required": ["files"]}}}, "required": True}})
    async def upload(kb: str, request: Request, wait: bool = False):
        """Upload files (multipart field ``files``) and ingest them as a job: 202 with the job to poll at
        ``GET /jobs/<id>``, or with ``?wait=true`` 200 and the per-file results once it is done."""
        path = server.kb_path(kb)
        max_bytes = settings.app.max_upload_mb * 2**20
        try:
            form = await request.form(max_files=settings.api.max_upload_files, max_fields=10)
        except BodyTooLarge:
            raise
        except HTTPException as exc:  # too many files, a broken multipart body
            raise ApiError(413 if "Too many files" in str(exc.detail) else 400,
                           f"{exc.detail} (at most {settings.api.max_upload_files} files, api.max_upload_files)",
                           param="files", code="invalid_upload") from None
        try:
            files = [f for f in form.getlist("files") if not isinstance(f, str)]
            if not files:
                raise ApiError(422, "no files: send them as multipart form field 'files'", param="files",
                               code="invalid_value")
            uploads: list[tuple[str, bytes | state.AppInputError]] = []
            for f in files:
                # The same per-file limit and wording as the Streamlit app's uploads (app.max_upload_mb).
                data = await f.read(max_bytes + 1)
                uploads.append((f.filename or "upload", data if len(data) <= max_bytes else state.AppInputError(
                    f"file is over the {settings.app.max_upload_mb} MB limit (app.max_upload_mb)")))
        finally:
            await form.close()
        job = server.jobs.submit(settings, kb, path, uploads)
        if wait:
            finished = await asyncio.get_running_loop().run_in_executor(None, job.finished.wait, UPLOAD_WAIT_SECONDS)
            if finished:
                return JSONResponse(job.view(), status_code=200)
        return JSONResponse(job.view(), status_code=202, headers={"Location": f"/jobs/{job.id}"})

    @api.get("/jobs/{job_id}", tags=["knowledge bases"])
    def get_job(job_id: str):
        """An ingest job: status (queued, running, done, failed), files done of total, chunks embedded so far,
        and the per-file results (added, updated, skipped, failed with the reason)."""
        job = server.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)",
                           code="job_not_found")
        return job.view()

    @api.delete("/kbs/{kb}/documents/{source:path}", tags=["knowledge bases"])
    def delete_document(kb: str, source: str):
        path = server.kb_path(kb)
        from kbcore.store import KnowledgeBase

        if not KnowledgeBase.exists(path) or not state.delete_kb_document(path, source):
            raise ApiError(404, f"no document {source!r} in {kb!r} (GET /kbs/{kb}/documents lists them)",
                           code="document_not_found")
        return {"deleted": source}

    @api.post("/kbs/{kb}/search", tags=["knowledge bases"])
    def search(kb: str, body: SearchRequest):
        """The passages retrieval finds for ``query``, best first, with their scores (fused, dense, BM25)."""
        path = server.kb_path(kb)
        if len(body.query) > settings.api.max_question_chars:
            raise ApiError(422, f"the query is {len(body.query):,} characters, over this server's limit of "
                                f"{settings.api.max_question_chars:,} (api.max_question_chars)", param="query",
                           code="question_too_long")
        from kbcore.store import KnowledgeBase

        if not KnowledgeBase.exists(path):
            return {"kb": kb, "hits": []}
        hits = service.get_retriever(settings, path).search(body.query, body.k)
        return {"kb": kb, "hits": [{"rank": h.rank, "source": h.source, "pages": list(h.pages), "score": h.score,
                                    "dense": h.dense, "lexical": h.lexical, "chunk_id": h.chunk.id,
                                    "heading": h.heading, "text": h.text} for h in hits]}

    return api


# ---------------------------------------------------------------- python -m app.api
def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.5", "example.org")]
    [True, True, True, False, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", help="address to listen on (default: setting api.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: setting api.port, 8000)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.api.host
    port = args.port if args.port is not None else settings.api.port
    if not is_loopback(host) and not settings.api.api_keys:
        print(f"refusing to listen on {host}, which other machines can reach, without API keys: set api.api_keys "
              f"in kbchat.toml (or KBCHAT_API__API_KEYS), or listen on 127.0.0.1", file=sys.stderr)
        return 2
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"kbchat API on http://{host}:{port}/v1 (OpenAPI page: /docs; knowledge bases under {settings.kb_root})",
          flush=True)
    uvicorn.run(create_app(settings), host=host, port=port, timeout_graceful_shutdown=5, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
