"""A small client for OpenAI-compatible servers (vLLM, SGLang, llama.cpp's server, Xinference, kbchat's own API),
shared by the remote LLM (``engine.remote``) and the remote embedder (``kbcore.embedding.remote``).

What it adds over a bare HTTP call is the errors: each names the server and the setting that fixes it (a server
that is down, a wrong key, a model it does not serve, a base URL without ``/v1``), and none holds the key.

>>> client = OpenAIClient("llm", "http://127.0.0.1:9/v1/", api_key="secret")
>>> client.base_url, "secret" in repr(client)
('http://127.0.0.1:9/v1', False)
>>> OpenAIClient("embedding", None)
Traceback (most recent call last):
...
kbcore.remote.RemoteError: embedding.backend is 'openai' but embedding.base_url is not set: set it to the server's URL up to /v1 (for example "http://127.0.0.1:8000/v1") in kbchat.toml or KBCHAT_EMBEDDING__BASE_URL
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator


class RemoteError(RuntimeError):
    """An OpenAI-compatible server could not be used; the message says which one and what to change."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OpenAIClient:
    """JSON requests and server-sent event streams to one server, over one connection pool (thread-safe).

    ``section`` is the settings section it serves ("llm" or "embedding"), named in every error."""

    def __init__(self, section: str, base_url: str | None, *, api_key: str | None = None, timeout: float = 60.0):
        env = f"KBCHAT_{section.upper()}__"
        if not base_url:
            raise RemoteError(f"{section}.backend is 'openai' but {section}.base_url is not set: set it to the "
                              f'server\'s URL up to /v1 (for example "http://127.0.0.1:8000/v1") in kbchat.toml or '
                              f"{env}BASE_URL")
        self.section, self.env = section, env
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        self._http = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIClient({self.section!r}, {self.base_url!r})"

    @property
    def http(self):
        with self._lock:
            if self._http is None:
                import httpx

                headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
                # Connecting is quick or never; a busy server may take a while before its first byte.
                self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout,
                                                                                 connect=min(10.0, self.timeout)))
            return self._http

    # ------------------------------------------------------------ requests
    def post(self, path: str, body: dict) -> dict:
        """The JSON answer to ``POST base_url + path``; ``RemoteError`` for anything else."""
        with self._transport(path):
            response = self.http.post(self.base_url + path, json=body)
            if response.status_code != 200:
                raise self._status_error(response, path, body.get("model"))
            try:
                return response.json()
            except ValueError:
                raise RemoteError(f"{self.base_url}{path} answered something that is not JSON "
                                  f"({response.text[:200]!r}): is {self.section}.base_url an OpenAI-compatible "
                                  f"server's URL up to /v1?") from None

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """The events of a server-sent event stream (``"stream": true`` in ``body``), up to ``[DONE]``. Closing the
        iterator closes the connection, which tells the server to stop."""
        with self._transport(path):
            with self.http.stream("POST", self.base_url + path, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._status_error(response, path, body.get("model"))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # comments, keep-alives, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise RemoteError(f"{self.base_url}{path} sent an event that is not JSON: {data[:200]!r}")
                    if isinstance(event, dict) and event.get("error"):
                        raise RemoteError(f"the server at {self.base_url} failed while answering: "
                                          f"{_message(event)}")
                    yield event

    def models(self) -> list[str] | None:
        """The model names ``GET /models`` lists, or None when the server cannot say."""
        try:
            response = self.http.get(self.base_url + "/models")
            return [m["id"] for m in response.json()["data"]] if response.status_code == 200 else None
        except Exception:
            return None

    # ------------------------------------------------------------ errors
    def _transport(self, path: str):
        return _TransportErrors(self, path)

    def _status_error(self, response, path: str, model: str | None) -> RemoteError:
        status, where, env = response.status_code, self.base_url, self.env
        try:
            said = _message(response.json())
        except ValueError:
            said = response.text[:200]
        if status in (401, 403):
            return RemoteError(f"the server at {where} refused the API key ({status}: {said}): set "
                               f"{self.section}.api_key (or {env}API_KEY) to a key it accepts", status)
        if status in (400, 404, 422) and model is not None:
            served = self.models()
            if served is not None and model not in served:
                return RemoteError(f"the server at {where} does not serve the model {model!r} ({status}: {said}); "
                                   f"it serves: {', '.join(served) or 'nothing'}. Set {self.section}.model"
                                   f"{' (or llm.adapter)' if self.section == 'llm' else ''} to one of them", status)
        if status in (404, 405):
            return RemoteError(f"the server at {where} has no {path} ({status}: {said}): {self.section}.base_url "
                               f"must be the URL up to /v1 (for example http://host:8000/v1)", status)
        return RemoteError(f"the server at {where} answered {status} to {path}: {said}", status)


class _TransportErrors:
    """Turns httpx's connection and timeout errors into ``RemoteError`` naming the server."""

    def __init__(self, client: OpenAIClient, path: str):
        self.client, self.path = client, path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        import httpx

        c = self.client
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            raise RemoteError(f"the server at {c.base_url} did not answer {self.path} within {c.timeout:g} s: it is "
                              f"busy or stuck; raise {c.section}.timeout ({c.env}TIMEOUT) if it is only slow") from None
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)):
            raise RemoteError(f"cannot reach the server at {c.base_url} ({type(exc).__name__}: {exc}): start it, "
                              f"or set {c.section}.base_url ({c.env}BASE_URL) to where it listens") from None
        if isinstance(exc, httpx.UnsupportedProtocol):
            raise RemoteError(f"{c.section}.base_url {c.base_url!r} is not an http(s) URL: set it like "
                              f"http://host:8000/v1") from None
        return False


def _message(payload: Any) -> str:
    """The error message of an OpenAI-shaped (or FastAPI-shaped) error body."""
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail", payload))
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return str(payload)[:200]
