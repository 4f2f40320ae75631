"""A model on an OpenAI-compatible server (``engine.remote``): what goes wrong says which server and what to change.

The servers are real: this project's API on a loopback port, a port nothing listens on, and a socket that takes
the connection but never answers.
"""

from __future__ import annotations

import socket

import pytest

from engine.decoding import DecodeOptions
from engine.generate import generate
from engine.models import is_loaded, load_model
from engine.remote import RemoteTokenizer
from kbcore.remote import RemoteError
from tests.app.test_api import serving

KEY = "right-key-789"
WRONG = "wrong-key-000"
MESSAGES = RemoteTokenizer().apply_chat_template([{"role": "user", "content": "你好"}])
OPTIONS = DecodeOptions(max_new_tokens=4)


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_model_dir):
    from kbcore.config import load_settings

    tmp = tmp_path_factory.mktemp("remote-errors")
    settings = load_settings(env={"KBCHAT_KB_ROOT": str(tmp / "kb"), "KBCHAT_LLM__MODEL": str(tiny_model_dir),
                                  "KBCHAT_LLM__QUANTIZATION": "fp32", "KBCHAT_API__PRELOAD": "false",
                                  "KBCHAT_API__API_KEYS": KEY}, use_default_file=False)
    (tmp / "kb" / "docs").mkdir(parents=True)  # a knowledge base, listed among the models the server serves
    with serving(settings) as url:
        yield url, settings


def remote(settings, **llm):
    return settings.with_overrides(llm={"backend": "openai", **llm}).llm


def ask(llm_settings, cache_dir) -> str:
    return "".join(generate(load_model(llm_settings, cache_dir), MESSAGES, OPTIONS))


def test_the_settings_read_the_backend_from_the_environment_and_never_show_the_key():
    from kbcore.config import load_settings

    settings = load_settings(env={"KBCHAT_LLM__BACKEND": "openai", "KBCHAT_LLM__BASE_URL": "http://gpu:8000/v1",
                                  "KBCHAT_LLM__API_KEY": "sk-secret", "KBCHAT_LLM__MODEL": "Qwen/Qwen2.5-7B-Instruct",
                                  "KBCHAT_LLM__TIMEOUT": "30", "KBCHAT_EMBEDDING__BACKEND": "openai",
                                  "KBCHAT_EMBEDDING__API_KEY": "sk-other"}, use_default_file=False)
    llm = settings.llm
    assert (llm.backend, llm.base_url, llm.api_key, llm.model, llm.timeout) == \
           ("openai", "http://gpu:8000/v1", "sk-secret", "Qwen/Qwen2.5-7B-Instruct", 30.0)
    assert settings.embedding.backend == "openai" and settings.embedding.api_key == "sk-other"
    assert "sk-" not in repr(settings) and "sk-" not in repr(load_model(llm, settings.cache_dir))
    assert is_loaded(llm, settings.cache_dir)  # nothing to load: the first question goes to the server
    with pytest.raises(ValueError, match="backend"):
        load_settings(env={"KBCHAT_LLM__BACKEND": "vllm"}, use_default_file=False)


def test_an_unset_base_url_names_the_setting(settings):
    with pytest.raises(RemoteError, match="llm.base_url is not set.*KBCHAT_LLM__BASE_URL"):
        load_model(remote(settings), settings.cache_dir)


def test_a_server_that_is_down_is_named_with_the_fix(settings, local_server):
    port = local_server.free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(RemoteError, match=rf"cannot reach the server at {url} .*start it, or set llm.base_url "
                                          r"\(KBCHAT_LLM__BASE_URL\)"):
        ask(remote(settings, base_url=url, model="m"), settings.cache_dir)


def test_a_server_that_never_answers_times_out_naming_the_setting(settings):
    with socket.socket() as listening:  # accepts connections (the kernel's backlog) and never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(4)
        url = f"http://127.0.0.1:{listening.getsockname()[1]}/v1"
        with pytest.raises(RemoteError, match=rf"the server at {url} did not answer /chat/completions within "
                                              r"0.5 s.*llm.timeout \(KBCHAT_LLM__TIMEOUT\)"):
            ask(remote(settings, base_url=url, model="m", timeout=0.5), settings.cache_dir)


def test_a_wrong_or_missing_key_is_named_and_never_shown(api):
    url, settings = api
    for key in (WRONG, None):
        with pytest.raises(RemoteError, match=r"refused the API key \(401.*set llm.api_key \(or "
                                              r"KBCHAT_LLM__API_KEY\)") as caught:
            ask(remote(settings, base_url=f"{url}/v1", api_key=key, model=settings.llm.model), settings.cache_dir)
        assert WRONG not in str(caught.value) and KEY not in str(caught.value)


def test_an_unknown_model_lists_what_the_server_serves(api):
    url, settings = api
    with pytest.raises(RemoteError, match=rf"does not serve the model 'qwen-typo' .*it serves: docs, "
                                          rf"{settings.llm.model}, multilingual-e5-small\. Set llm.model "
                                          r"\(or llm.adapter\)"):
        ask(remote(settings, base_url=f"{url}/v1", api_key=KEY, model="qwen-typo"), settings.cache_dir)


def test_a_base_url_without_v1_says_where_it_must_end(api):
    url, settings = api
    with pytest.raises(RemoteError, match=r"has no /chat/completions \(404.*must be the URL up to /v1"):
        ask(remote(settings, base_url=url, api_key=KEY, model=settings.llm.model), settings.cache_dir)


def test_the_error_reaches_whoever_asked_the_question(api, settings):
    """Through the answer stage: the question's stream raises the server's error, not a hang or a blank answer."""
    from llm.answerer import Answerer
    from tests.llm.test_answer import FixedRetriever, hit

    url, _ = api
    asking = settings.with_overrides(llm={"backend": "openai", "base_url": f"{url}/v1", "api_key": WRONG,
                                          "model": "m"})
    answerer = Answerer(asking, FixedRetriever([hit(1, "第二十二条 供应商应当具有良好的商业信誉。")]))
    with pytest.raises(RemoteError, match="refused the API key"):
        answerer.answer("供应商应当具备什么条件？")


def test_health_is_ready_only_while_the_model_server_answers_and_serves_the_model(api, local_server, tmp_path):
    """/health of an API whose answers come from another server (here the real API above) follows that server."""
    import httpx

    from tests.app.test_api import serving

    url, settings = api
    front = settings.with_overrides(kb_root=str(tmp_path / "kb"),
                                    llm={"backend": "openai", "base_url": f"{url}/v1", "api_key": KEY},
                                    api={"api_keys": ()})
    down = f"http://127.0.0.1:{local_server.free_port()}/v1"
    cases = [(front, True, True), (front.with_overrides(llm={"model": "qwen-typo"}), True, False),
             (front.with_overrides(llm={"base_url": down}), False, False)]
    for case, reachable, served in cases:
        with serving(case) as front_url:
            health = httpx.get(f"{front_url}/health", timeout=30).json()
        assert health["upstream"]["llm"]["reachable"] is reachable, health
        assert health["upstream"]["llm"]["served"] is served and health["ready"] is served, health
        assert "embedding" not in health["upstream"]  # the embedder runs here


def test_the_estimated_prompt_size_is_above_what_the_real_tokenizer_counts(default_model_dir):
    """Prompts are fitted to llm.max_prompt_tokens with the estimate, so it must not count fewer tokens than the
    server's tokenizer (here Qwen2.5's, through its chat template) on real Chinese and English passages."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from llm.prompts import build_messages, render_prompt
    from tests.llm.test_answer import hit

    real = AutoTokenizer.from_pretrained(default_model_dir)
    samples = Path(__file__).resolve().parents[2] / "samples"
    texts = [p.read_text(encoding="utf-8") for p in sorted(samples.glob("*.[tm][xd]*"))]
    assert texts
    english = "Debian packages are installed with dpkg and apt-get; run apt-get update before upgrading 2,024 files."
    for text in [t[i:i + 600] for t in texts for i in range(0, len(t), 600)] + [english * 5]:
        messages = build_messages("供应商应当具备什么条件？", [hit(1, text)])
        estimated = len(RemoteTokenizer()(render_prompt(RemoteTokenizer(), messages))["input_ids"])
        counted = len(real(render_prompt(real, messages), add_special_tokens=False)["input_ids"])
        assert estimated >= counted, (estimated, counted, text[:80])
