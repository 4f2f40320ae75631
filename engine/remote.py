"""Generation on an OpenAI-compatible server (``llm.backend = "openai"``): the ``LoadedModel`` of a model that
runs elsewhere, behind the same calls as the local one (``load_model``, ``generate``,
``stream_from_compute_thread``), so the answer stage runs unchanged over it.

It asks ``/v1/chat/completions`` with the chat messages, not ``/v1/completions`` with a rendered prompt: the
server applies its own model's chat template, which a client cannot know for an arbitrary remote model, and every
server serves chat. So a remote model's "prompt" is its messages as JSON (``RemoteTokenizer.apply_chat_template``),
and ``generate`` sends them back as messages.

Token counts here are estimates (``RemoteTokenizer``): one per CJK character or other symbol, one per run of up
to four letters or three digits, above what the BPE tokenizers of Qwen, Llama and their kind count, so prompts
fitted to ``llm.max_prompt_tokens`` fit the server too. Decoding runs on the server: the local decoder's
repetition guards (``no_repeat_ngram``, banned first tokens) do not apply; the answer checks catch loops either way.

>>> t = RemoteTokenizer()
>>> t("供应商 supplier 2024")["input_ids"]
['供', '应', '商', ' ', 'supp', 'lier', ' ', '202', '4']
>>> t.decode(t("供应商")["input_ids"][:2])
'供应'
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kbcore.config import LLMSettings
from kbcore.remote import OpenAIClient, RemoteError

__all__ = ["RemoteModel", "RemoteTokenizer", "RemoteError", "connect"]

_PIECES = re.compile(r"[A-Za-z]{1,4}|[0-9]{1,3}|\s+|.", re.DOTALL)


class RemoteTokenizer:
    """The tokenizer calls the answer stage makes, for a model whose tokenizer is on another machine: estimated
    pieces (their "ids" are the text pieces, so cutting and decoding give text back) and a chat "template" that
    keeps the messages as JSON for ``RemoteModel.generate``."""

    eos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = True, **_) -> dict:
        return {"input_ids": _PIECES.findall(text)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(ids)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True,
                            **_) -> str:
        return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)

    def get_vocab(self) -> dict:
        return {}


@dataclass
class RemoteModel:
    """A model served at ``client.base_url`` under the name ``served``: the model, or the adapter when one is set."""

    client: OpenAIClient
    served: str
    model_id: str
    adapter: str | None = None
    tokenizer: RemoteTokenizer = field(default_factory=RemoteTokenizer)
    model: None = None  # no local weights: engine.decoding.stop_ids finds no generation config
    device: str = "remote"
    quantization: str = "remote"
    base_sha256: str = ""
    remote: bool = True
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Run ``fn`` on a thread of this model's own: waiting for a server must not hold the compute thread, where
        queries are embedded; the server takes several requests at once and batches them."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kbchat-remote")
        return self._pool.submit(fn, *args, **kwargs)

    def generate(self, prompt: str, options) -> Iterator[str]:
        """Text pieces of the server's answer to ``prompt`` (``RemoteTokenizer.apply_chat_template``'s JSON),
        streamed; ``options`` is ``engine.decoding.DecodeOptions``."""
        try:
            messages = json.loads(prompt)
        except ValueError:
            raise ValueError("a remote model's prompt is its chat messages as JSON (render it with "
                             "RemoteTokenizer.apply_chat_template)") from None
        body = {"model": self.served, "messages": messages, "max_tokens": options.max_new_tokens,
                "temperature": options.temperature, "stream": True}
        if options.temperature > 0:
            body["top_p"] = options.top_p
        for event in self.client.stream("/chat/completions", body):
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece


_connected: dict[tuple, RemoteModel] = {}
_connected_lock = threading.Lock()


def connect(settings: LLMSettings) -> RemoteModel:
    """The remote model for ``settings`` (one per server, model and key, with one connection pool); nothing is sent
    until the first question."""
    key = (settings.base_url, settings.api_key, settings.timeout, settings.model, settings.adapter)
    with _connected_lock:
        if key not in _connected:
            client = OpenAIClient("llm", settings.base_url, api_key=settings.api_key, timeout=settings.timeout)
            # An adapter is served under its own name (vLLM's --lora-modules NAME=PATH); a path names its folder.
            served = Path(settings.adapter).name if settings.adapter else settings.model
            _connected[key] = RemoteModel(client, served, settings.model, settings.adapter)
        return _connected[key]
