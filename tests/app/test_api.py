"""The HTTP API (``app.api``) served for real by uvicorn on a free loopback port, driven by the official ``openai``
client (models, chat streamed and not, embeddings) and by plain HTTP (knowledge-base management, bad input).

A tiny random model stands in for the LLM (its words do not matter here); one slow test asks the real default
model and checks its citation points at the page holding the answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from app import state
from app.api import FairQueue, QueueFull, create_app

KEY = "test-key-123"
PDF = "zfcg-xinxi-fabu-guanli-banfa.pdf"
QUESTION = "同一条政府采购信息在不同媒体上发布的内容或时间不一致时，以哪里发布的为准？"
UNRELATED = "What is the boiling point of mercury at sea level?"
REPO = Path(__file__).resolve().parents[2]


def make_settings(tmp: Path, llm_dir: Path | None, **api):
    from kbcore.config import load_settings

    env = {"KBCHAT_KB_ROOT": str(tmp / "kb"), "KBCHAT_ADAPTERS_DIR": str(tmp / "adapters"),
           "KBCHAT_LLM__TEMPERATURE": "0", "KBCHAT_LLM__MAX_NEW_TOKENS": "8"}
    if llm_dir is not None:
        env |= {"KBCHAT_LLM__MODEL": str(llm_dir), "KBCHAT_LLM__QUANTIZATION": "fp32"}
    settings = load_settings(env=env, use_default_file=False)
    return settings.with_overrides(api={"api_keys": (KEY,), **api})


@contextmanager
def serving(settings):
    """uvicorn serving ``create_app(settings)`` on a free loopback port, in this process (so a test can watch the
    model); yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings), log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def client(url: str, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=120)


def http(url: str, key: str | None = KEY) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=120)


def wait_idle(url: str, timeout: float = 30) -> dict:
    """/health once no generation runs or waits."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{url}/health").json()
        if not health["generations"]["running"] and not health["generations"]["queued"]:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def stored(kb_path: Path) -> tuple:
    """What a knowledge base holds: its documents (with content hashes) and its stored uploads."""
    from kbcore.store import KnowledgeBase

    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        docs = [(d.source, d.content_hash, d.chunks) for d in kb.documents()]
    finally:
        kb.close()
    files = sorted((p.name, p.stat().st_size) for p in (kb_path / state.FILES_DIR).iterdir())
    return docs, files


@pytest.fixture(scope="module")
def api_root(tmp_path_factory, tiny_model_dir, eval_dir):
    """A knowledge-base root with ``docs`` (one real PDF, ingested the way an upload is) and an empty ``empty``."""
    tmp = tmp_path_factory.mktemp("api")
    settings = make_settings(tmp, tiny_model_dir)
    state.create_kb_folder(settings.kb_root, "docs")
    state.create_kb_folder(settings.kb_root, "empty")
    rows = state.ingest_uploads([(PDF, (eval_dir / "docs" / PDF).read_bytes())], settings,
                                settings.kb_root / "docs")
    assert [r["status"] for r in rows] == ["added"], rows
    return tmp


@pytest.fixture(scope="module")
def api(api_root, tiny_model_dir):
    settings = make_settings(api_root, tiny_model_dir)
    with serving(settings) as url:
        yield url, settings


# ---------------------------------------------------------------- the OpenAI surface
def test_models_chat_and_embeddings_through_the_openai_client(api):
    url, settings = api
    ai = client(url)
    # The knowledge bases, then the model itself and the embedding model (for clients with their own passages).
    assert [m.id for m in ai.models.list().data] == ["docs", "empty", settings.llm.model, "multilingual-e5-small"]
    assert ai.models.retrieve("docs").id == "docs"

    # Not streamed: the checked answer with its extension field; the same question streamed gives the same answer.
    done = ai.chat.completions.create(model="docs", messages=[{"role": "user", "content": QUESTION}])
    text = done.choices[0].message.content
    extra = done.kbchat
    assert text and done.choices[0].finish_reason in ("stop", "length")
    assert set(extra) == {"found", "citations", "unsupported", "unmentioned", "search_query"}
    assert extra["search_query"] == QUESTION
    for c in extra["citations"]:
        assert c["source"] == PDF and c["pages"] and c["snippet"] and isinstance(c["chunk_id"], int)
    assert done.usage.prompt_tokens > 100 and 0 < done.usage.completion_tokens <= 8

    chunks = list(ai.chat.completions.create(model="docs", messages=[{"role": "user", "content": QUESTION}],
                                             stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    draft = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert draft.strip()
    assert last.kbchat["text"] == text and last.kbchat["citations"] == extra["citations"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == done.usage.completion_tokens

    # Not in the documents: an ordinary answer, flagged, with no citations; streamed, the text is the answer.
    none = ai.chat.completions.create(model="docs", messages=[{"role": "user", "content": UNRELATED}])
    assert "do not contain" in none.choices[0].message.content
    assert none.kbchat["found"] is False and none.kbchat["citations"] == []
    streamed = list(ai.chat.completions.create(model="docs", messages=[{"role": "user", "content": UNRELATED}],
                                               stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == none.choices[0].message.content

    # Earlier turns are the history: a follow-up is searched together with the question before it.
    follow = ai.chat.completions.create(model="docs", messages=[
        {"role": "system", "content": "ignored: the server has its own prompt"},
        {"role": "user", "content": QUESTION}, {"role": "assistant", "content": text},
        {"role": "user", "content": "那么信息发布应当遵循什么原则呢？"}], temperature=0.5, top_p=0.8, max_tokens=4)
    assert follow.kbchat["search_query"] == f"{QUESTION} 那么信息发布应当遵循什么原则呢？"
    assert follow.usage.completion_tokens <= 4

    # Embeddings: the knowledge base's model, the same vectors it stores passages with (the client asks base64).
    from kbcore.embedding import load_embedder

    texts = ["政府采购信息发布", "供应商"]
    got = np.array([d.embedding for d in ai.embeddings.create(model="docs", input=texts).data])
    want = load_embedder(settings.embedding, settings.cache_dir).embed_passages(texts)
    assert got.shape == (2, 384) and np.allclose(got, want, atol=1e-5)
    floats = ai.embeddings.create(model="docs", input="供应商", encoding_format="float").data[0].embedding
    assert np.allclose(floats, want[1], atol=1e-5)


def test_the_model_itself_answers_the_messages_it_is_sent(api):
    """Asked for ``llm.model`` (what another kbchat's ``llm.backend = "openai"`` asks for), the API is a plain model
    server: the messages through the model's chat template, streamed and not, no knowledge base and no kbchat field;
    a prompt over llm.max_prompt_tokens is refused as OpenAI refuses one over the context."""
    url, settings = api
    ai = client(url)
    model = settings.llm.model
    messages = [{"role": "system", "content": "只用中文回答。"}, {"role": "user", "content": QUESTION}]
    done = ai.chat.completions.create(model=model, messages=messages, max_tokens=6)
    assert done.model == model and done.choices[0].message.content and not hasattr(done, "kbchat")
    assert done.usage.prompt_tokens > 20 and 0 < done.usage.completion_tokens <= 6
    chunks = list(ai.chat.completions.create(model=model, messages=messages, max_tokens=6, stream=True,
                                             stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == done.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == done.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="llm.max_prompt_tokens") as caught:
        ai.chat.completions.create(model=model, messages=[{"role": "user", "content": "政府采购的供应商" * 1000}])
    assert caught.value.code == "context_length_exceeded"
    assert wait_idle(url)["generations"]["failed"] == 0  # refused, not failed
    with pytest.raises(openai.UnprocessableEntityError, match="last message must be the user's"):
        ai.chat.completions.create(model=model, messages=[*messages, {"role": "assistant", "content": "好"}])


def test_a_knowledge_base_keeps_its_name_when_the_model_has_it_too(tmp_path):
    from app.api import Server

    settings = make_settings(tmp_path, None)
    state.create_kb_folder(settings.kb_root, "docs")
    for model, asked, bare in (("docs", "docs", False), ("qwen2.5-0.5b", "qwen2.5-0.5b", True),
                               ("qwen2.5-0.5b", "other", False), ("qwen2.5-0.5b", "docs:x", False)):
        server = Server(settings.with_overrides(llm={"model": model}))
        assert (server.bare_model(asked) is not None) == bare, (model, asked)
        server.workers.shutdown()


def test_adapters_trained_on_the_model_are_models_of_each_knowledge_base(api, tiny_model_dir):
    import shutil

    url, settings = api
    for name, base in (("mine", str(tiny_model_dir)), ("foreign", "f" * 64)):
        (settings.adapters_dir / name).mkdir(parents=True)
        (settings.adapters_dir / name / "kbchat_adapter.json").write_text(json.dumps({"base_model_sha256": base}))
    try:
        assert [m.id for m in client(url).models.list().data] == ["docs", "docs:mine", "empty", "empty:mine",
                                                                  settings.llm.model, "mine", "multilingual-e5-small"]
        with pytest.raises(openai.NotFoundError, match="no adapter 'foreign'"):
            client(url).chat.completions.create(model="docs:foreign", messages=[{"role": "user", "content": "x"}])
    finally:
        shutil.rmtree(settings.adapters_dir)


def test_managing_knowledge_bases_over_http(api, eval_dir):
    url, settings = api
    with http(url) as h:
        made = h.post("/kbs", json={"name": "法规 库"})
        assert made.status_code == 201 and made.json() == {"name": "法规-库", "documents": 0, "chunks": 0}
        assert [k["name"] for k in h.get("/kbs").json()["kbs"]] == ["docs", "empty", "法规-库"]
        assert h.post("/kbs/法规-库/search", json={"query": "供应商"}).json()["hits"] == []

        # Upload and wait: one row per file; a hostile name is stored under its safe name inside the kb folder.
        files = [("files", (PDF, (eval_dir / "docs" / PDF).read_bytes(), "application/pdf")),
                 ("files", ("../../evil.txt", "第一条 供应商应当诚实守信。".encode(), "text/plain")),
                 ("files", ("tool.exe", b"MZ", "application/octet-stream"))]
        job = h.post("/kbs/法规-库/documents", params={"wait": "true"}, files=files)
        assert job.status_code == 200 and job.json()["status"] == "done", job.text
        rows = {r["file"]: (r["status"], r["reason"]) for r in job.json()["results"]}
        assert rows[PDF] == ("added", "") and rows["evil.txt"] == ("added", "")
        assert rows["tool.exe"][0] == "failed" and "unsupported file type" in rows["tool.exe"][1]
        kb_path = settings.kb_root / "法规-库"
        assert sorted(p.name for p in (kb_path / "files").iterdir()) == sorted([PDF, "evil.txt"])
        assert not (settings.kb_root / "evil.txt").exists() and not (settings.kb_root.parent / "evil.txt").exists()

        # Without waiting: 202 and a job to poll until it is done.
        again = h.post("/kbs/法规-库/documents", files=[("files", ("note.md", "# 说明\n采购人应当公开信息。".encode()))])
        assert again.status_code == 202 and again.headers["location"] == f"/jobs/{again.json()['id']}"
        deadline = time.monotonic() + 60
        while (polled := h.get(again.headers["location"]).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert polled["status"] == "done" and polled["results"][0]["status"] == "added", polled

        docs = h.get("/kbs/法规-库/documents").json()["documents"]
        assert sorted(d["source"] for d in docs) == sorted([PDF, "evil.txt", "note.md"])
        hits = h.post("/kbs/法规-库/search", json={"query": QUESTION, "k": 3}).json()["hits"]
        assert len(hits) == 3 and hits[0]["source"] == PDF and hits[0]["rank"] == 1
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"] and 0 < hits[0]["dense"] <= 1

        assert h.delete("/kbs/法规-库/documents/evil.txt").json() == {"deleted": "evil.txt"}
        assert h.delete("/kbs/法规-库/documents/evil.txt").status_code == 404
        assert not (kb_path / "files" / "evil.txt").exists()

        assert h.delete("/kbs/法规-库").json() == {"deleted": "法规-库"}
        assert not kb_path.exists() and [k["name"] for k in h.get("/kbs").json()["kbs"]] == ["docs", "empty"]
        assert h.get("/kbs/法规-库/documents").status_code == 404
        assert h.get("/jobs/nope").status_code == 404


# ---------------------------------------------------------------- bad input
def test_bad_requests_get_their_status_and_change_nothing(api):
    url, settings = api
    kb_path = settings.kb_root / "docs"
    before = stored(kb_path)
    ask = {"model": "docs", "messages": [{"role": "user", "content": QUESTION}]}

    def error_of(response: httpx.Response, status: int) -> dict:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return error

    for key in (None, "wrong-key"):
        with pytest.raises(openai.AuthenticationError):
            client(url, key).models.list()
        with http(url, key) as h:
            assert error_of(h.get("/kbs"), 401)["type"] == "authentication_error"
            assert error_of(h.post("/kbs/docs/documents", files=[("files", ("a.txt", b"x"))]), 401)
            assert error_of(h.delete("/kbs/docs"), 401)
    assert httpx.get(f"{url}/health").status_code == 200  # probes need no key

    with http(url) as h:
        malformed = h.post("/v1/chat/completions", content=b'{"model": "docs", "messages": [',
                           headers={"Content-Type": "application/json"})
        assert error_of(malformed, 400)["code"] == "invalid_json"
        assert error_of(h.post("/v1/chat/completions", json={"model": "docs", "messages": []}), 422)["param"] == \
            "messages"
        huge = h.post("/v1/chat/completions", json={**ask, "messages": [{"role": "user", "content": "问" * 2**20}]})
        assert "api.max_body_kb" in error_of(huge, 413)["message"]
        long = h.post("/v1/chat/completions", json={**ask, "messages": [{"role": "user", "content": "问" * 3000}]})
        assert error_of(long, 422)["code"] == "question_too_long"
        assert error_of(h.post("/v1/chat/completions", json={**ask, "max_tokens": 10**6}), 422)["param"] == \
            "max_tokens"
        assert error_of(h.post("/v1/chat/completions", json={**ask, "temperature": 3}), 422)["param"] == \
            "temperature"
        assistant_last = {**ask, "messages": [{"role": "assistant", "content": "hi"}]}
        assert error_of(h.post("/v1/chat/completions", json=assistant_last), 422)["param"] == "messages"
        assert error_of(h.post("/v1/chat/completions", json={**ask, "model": "empty"}), 409)["code"] == "kb_empty"
        assert error_of(h.get("/kbs/.hidden/documents"), 422)["message"].startswith("'.hidden' is not a knowledge-base")
        assert h.get("/kbs/..%2F..%2Fetc/documents").status_code in (404, 422)
        assert error_of(h.post("/kbs/nope/search", json={"query": "x"}), 404)
        assert error_of(h.post("/v1/embeddings", json={"model": "docs", "input": []}), 422)["param"] == "input"
        # Unknown fields are ignored, as OpenAI ignores them.
        assert h.post("/v1/chat/completions", json={**ask, "max_tokens": 2, "frequency_penalty": 0.5,
                                                    "user": "u1"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="no-such-kb", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.UnprocessableEntityError):
        client(url).chat.completions.create(model="docs", messages=[])

    # Path traversal in an upload's name and in a document's name: nothing outside, nothing stored changed.
    with http(url) as h:
        job = h.post("/kbs/empty/documents", params={"wait": "true"},
                     files=[("files", ("../docs/kb.sqlite", b"not a database"))]).json()
        assert job["results"][0]["file"] == "kb.sqlite" and job["results"][0]["status"] == "failed"
        assert error_of(h.delete("/kbs/docs/documents/..%2Fkb.sqlite"), 404)
    assert stored(kb_path) == before
    assert wait_idle(url)["generations"]["failed"] == 0


def test_bodies_over_the_limit_are_refused_before_they_are_read(api):
    url, _ = api
    # Announced too large: refused at once, without waiting for a body that never comes.
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as raw:
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                    b"\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
        head = b""  # the status line and the body may come in two segments
        while b"api.max_body_kb" not in head and (part := raw.recv(65536)):
            head += part
    assert head.startswith(b"HTTP/1.1 413") and b"api.max_body_kb" in head

    # Sent without a length (chunked): counted as it arrives and refused once over the limit.
    def pieces():
        yield b'{"model": "docs", "messages": [{"role": "user", "content": "'
        for _ in range(400):
            yield "问".encode() * 1000
        yield b'"}]}'

    with http(url) as h:
        chunked = h.post("/v1/chat/completions", content=pieces(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"


def test_upload_limits(api_root, tiny_model_dir):
    settings = make_settings(api_root, tiny_model_dir, max_upload_request_mb=1, max_upload_files=2)
    settings = settings.with_overrides(app={"max_upload_mb": 1}, api={"preload": False})
    before = stored(settings.kb_root / "docs")
    with serving(settings) as url, http(url) as h:
        big = h.post("/kbs/docs/documents", files=[("files", ("big.txt", b"x" * (2 * 2**20)))])
        assert big.status_code == 413 and "api.max_upload_request_mb" in big.json()["error"]["message"]
        many = h.post("/kbs/docs/documents", files=[("files", (f"{i}.txt", b"x")) for i in range(3)])
        assert many.status_code == 413 and "api.max_upload_files" in many.json()["error"]["message"]
        assert h.post("/kbs/nope/documents", files=[("files", ("a.txt", b"x"))]).status_code == 404
    assert stored(settings.kb_root / "docs") == before


# ---------------------------------------------------------------- one model, a fair queue, disconnects
def test_a_client_that_hangs_up_stops_its_generation(api_root, tiny_model_dir, monkeypatch):
    """A slowed model generates for a client that leaves after three pieces: generation stops at once, the queue
    (no room to wait here) refuses a second question meanwhile with 429, and serves again afterwards."""
    import engine.generate

    steps = []
    real_forward = engine.generate.model_forward

    def slow_forward(loaded, length):
        forward = real_forward(loaded, length)

        def step(ids):
            steps.append(1)
            time.sleep(0.01)
            return forward(ids)

        return step

    monkeypatch.setattr(engine.generate, "model_forward", slow_forward)
    settings = make_settings(api_root, tiny_model_dir, max_queued=0)
    before = stored(settings.kb_root / "docs")
    with serving(settings) as url:
        ai = client(url)
        # Sampling: a random model's greedy output loops and is stopped early; sampled, it runs to max_tokens.
        stream = ai.chat.completions.create(model="docs", messages=[{"role": "user", "content": QUESTION}],
                                            stream=True, temperature=1.0, max_tokens=1000)
        pieces = 0
        for chunk in stream:
            pieces += bool(chunk.choices and chunk.choices[0].delta.content)
            if pieces == 3:
                break
        with pytest.raises(openai.RateLimitError) as refused:
            ai.chat.completions.create(model="docs", messages=[{"role": "user", "content": QUESTION}])
        assert refused.value.body["code"] == "queue_full" and "api.max_queued" in refused.value.body["message"]
        stream.close()
        health = wait_idle(url)
        assert health["generations"]["cancelled"] == 1 and health["generations"]["served"] == 0
        assert len(steps) < 100, f"generation went on for {len(steps)} tokens after the client left"

        # Not streamed: a client that gives up waiting stops its generation too.
        steps.clear()
        with pytest.raises(httpx.ReadTimeout), http(url) as h:
            h.post("/v1/chat/completions", timeout=1.0, json={
                "model": "docs", "messages": [{"role": "user", "content": QUESTION}], "temperature": 1.0,
                "max_tokens": 1000})
        health = wait_idle(url)
        assert health["generations"]["cancelled"] == 2 and health["generations"]["served"] == 0
        assert len(steps) < 300, f"generation went on for {len(steps)} tokens after the client left"
        answered = ai.chat.completions.create(model="docs", messages=[{"role": "user", "content": QUESTION}])
        assert answered.choices[0].message.content
    assert stored(settings.kb_root / "docs") == before


def test_the_queue_takes_clients_in_turn():
    async def scenario():
        queue = FairQueue(max_waiting=4)
        first = queue.enter("a")
        assert first.done() and queue.busy
        a2, a3, b1 = queue.enter("a"), queue.enter("a"), queue.enter("b")
        c1 = queue.enter("c")
        with pytest.raises(QueueFull):
            queue.enter("d")
        queue.abandon("c", c1)  # c hung up while waiting
        served = []
        for _ in range(3):
            queue.leave()
            served.append(next(name for name, t in (("a2", a2), ("a3", a3), ("b1", b1))
                               if t.done() and name not in served))
        assert served == ["a2", "b1", "a3"]  # a's burst does not keep b waiting behind all of it
        queue.leave()
        assert not queue.busy and queue.waiting == 0

    asyncio.run(scenario())


# ---------------------------------------------------------------- the command
def test_the_command_serves_and_refuses_open_addresses_without_keys(api_root, tiny_model_dir, local_server):
    config = api_root / "empty.toml"
    config.write_text("", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBCHAT_")}
    env |= {"KBCHAT_CONFIG": str(config), "KBCHAT_KB_ROOT": str(api_root / "kb"), "KBCHAT_API__PRELOAD": "false",
            "KBCHAT_LLM__MODEL": str(tiny_model_dir), "KBCHAT_LLM__QUANTIZATION": "fp32"}
    refused = subprocess.run([sys.executable, "-m", "app.api", "--host", "0.0.0.0"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "api.api_keys" in refused.stderr

    heavy = "{'torch', 'transformers', 'retrieval', 'engine.models'}"
    light = subprocess.run([sys.executable, "-c", "import sys, app.api; app.api.create_app(); "
                            f"print(sorted({heavy} & set(sys.modules)))"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert light.stdout.strip() == "[]", light.stderr  # nothing heavy at import or app creation

    port = local_server.free_port()
    server = subprocess.Popen([sys.executable, "-m", "app.api", "--port", str(port)], cwd=REPO,
                              env=env | {"KBCHAT_API__API_KEYS": KEY}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        health = local_server.wait_json(f"http://127.0.0.1:{port}/health", server, timeout=60)
        assert health["status"] == "ok" and health["ready"] is False  # preload off: nothing loaded yet
        assert [m.id for m in client(f"http://127.0.0.1:{port}").models.list().data] == \
               ["docs", "empty", str(tiny_model_dir), "multilingual-e5-small"]
    finally:
        server.terminate()
        server.wait(15)


# ---------------------------------------------------------------- the real model
@pytest.mark.slow
def test_real_model_cites_the_page_holding_the_answer(api_root):
    """The default model answers the question from the PDF; a citation of its answer points at the chunk and page
    that hold the rule (在中国政府采购网或者其省级分网发布的信息为准)."""
    from kbcore.store import KnowledgeBase

    settings = make_settings(api_root, None).with_overrides(llm={"max_new_tokens": 64})
    kb = KnowledgeBase(settings.kb_root / "docs", readonly=True)
    try:
        chunks = {c.id: c for c in kb.chunks(PDF)}
    finally:
        kb.close()
    holding = {p for c in chunks.values() if "中国政府采购网或者其省级分网" in c.text.replace("\n", "")
               for p in c.pages}
    assert holding, "the PDF's rule is not in the knowledge base"
    with serving(settings) as url:
        done = client(url).chat.completions.create(model="docs", messages=[{"role": "user", "content": QUESTION}])
    answer, extra = done.choices[0].message.content, done.kbchat
    assert extra["found"] and "中国政府采购网" in answer, answer
    cited = [c for c in extra["citations"] if "中国政府采购网" in chunks[c["chunk_id"]].text]
    assert cited, extra["citations"]
    for c in cited:
        assert c["source"] == PDF and set(c["pages"]) & holding, c
        assert c["label"].startswith(f"[{c['index']}] {PDF} · p")
        assert " ".join(chunks[c["chunk_id"]].text.split()).startswith(" ".join(c["snippet"].rstrip("…").split()))
