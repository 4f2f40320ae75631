"""The answer stage over a model on an OpenAI-compatible server (``llm.backend = "openai"``): this project's own API,
served for real on a loopback port, is the server; a second configuration points at it.

With the same tiny model on both sides, an answer through the server is the answer generated here: the same
passages, the server's chat template on the same messages, the same decoding, the same checks and citations,
streamed and not, and "not found" without asking the server at all. One slow test asks the real default model.
"""

from __future__ import annotations

import json

import httpx
import pytest

from engine.models import load_model
from kbcore.remote import RemoteError
from llm.answerer import Answerer
from tests.app.test_api import serving
from tests.llm.test_answer import FixedRetriever, hit

KEY = "remote-key-456"
QUESTION = "供应商应当具备什么条件？"
PASSAGES = [hit(1, "第二十二条 供应商应当具有良好的商业信誉和健全的财务会计制度。"),
            hit(2, "第二十三条 采购人可以要求参加政府采购的供应商提供有关资质证明文件。", source="b.pdf", pages=(3, 3))]


def local_settings(tmp, model_dir):
    from kbcore.config import load_settings

    env = {"KBCHAT_KB_ROOT": str(tmp / "kb"), "KBCHAT_ADAPTERS_DIR": str(tmp / "adapters"),
           "KBCHAT_LLM__MODEL": str(model_dir), "KBCHAT_LLM__QUANTIZATION": "fp32", "KBCHAT_LLM__MAX_NEW_TOKENS": "12",
           "KBCHAT_API__PRELOAD": "false", "KBCHAT_API__API_KEYS": KEY}
    return load_settings(env=env, use_default_file=False)


def remote_settings(settings, url, **llm):
    """The same settings, generating on the server at ``url`` (its model is served under ``llm.model``)."""
    return settings.with_overrides(llm={"backend": "openai", "base_url": f"{url}/v1", "api_key": KEY, **llm})


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("remote-llm")
    settings = local_settings(tmp, tiny_model_dir)
    with serving(settings) as url:
        yield url, settings


def served(url) -> int:
    return httpx.get(f"{url}/health").json()["generations"]["served"]


def test_an_answer_through_the_server_is_the_answer_generated_here(server):
    url, settings = server
    remote = remote_settings(settings, url)
    here = Answerer(settings, FixedRetriever(PASSAGES), load_model(settings.llm, settings.cache_dir))
    there = Answerer(remote, FixedRetriever(PASSAGES))
    assert there.loaded.device == "remote" and there.loaded.served == settings.llm.model

    local_stream = here.stream(QUESTION)
    local_pieces = list(local_stream)
    before = served(url)
    remote_stream = there.stream(QUESTION)
    remote_pieces = list(remote_stream)
    assert served(url) == before + 1  # the server wrote it
    # The same passages and messages, so the same draft from the same greedy decoding, and the same checked answer.
    sent = json.loads(remote_stream.prepared.prompt)  # a remote model's prompt is the messages it is sent
    assert [m["role"] for m in sent] == ["system", "user"]
    assert all(m["content"] in local_stream.prepared.prompt for m in sent)
    assert "".join(remote_pieces) == "".join(local_pieces) and remote_pieces
    expected, got = local_stream.answer, remote_stream.answer
    assert (got.text, got.found, got.degenerate, got.citations) == \
           (expected.text, expected.found, expected.degenerate, expected.citations)
    assert got.found and got.citations and got.citations[0].source == "a.pdf"  # the passage it quotes, cited

    # Not streamed: the same answer again.
    again = there.answer(QUESTION)
    assert (again.text, again.citations) == (expected.text, expected.citations)


def test_nothing_relevant_is_not_found_without_asking_the_server(server):
    url, settings = server
    weak = [hit(1, "无关内容", dense=0.80)]
    before = served(url)
    result = Answerer(remote_settings(settings, url), FixedRetriever(weak)).answer("法国的首都是哪里？")
    local = Answerer(settings, FixedRetriever(weak), load_model(settings.llm, settings.cache_dir)).answer("法国的首都是哪里？")
    assert not result.found and result.text == local.text and result.citations == []
    assert served(url) == before


def make_adapter(model_dir, folder, name: str) -> None:
    """A LoRA adapter with random (non-zero) weights on all linear layers, saved as kbchat saves adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.adapters import ADAPTER_META

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder / name)
    (folder / name / ADAPTER_META).write_text(json.dumps({"name": name, "base_model": str(model_dir),
                                                          "base_model_sha256": str(model_dir)}), encoding="utf-8")


def test_an_adapter_is_asked_for_by_its_name_as_vllm_serves_lora_modules(server, tiny_model_dir):
    """``llm.adapter`` with the openai backend sends the adapter's name as the model: the server (here kbchat's API;
    vLLM with --lora-modules NAME=PATH alike) answers with that adapter."""
    url, settings = server
    make_adapter(tiny_model_dir, settings.adapters_dir, "mine")
    with_adapter = settings.with_overrides(llm={"adapter": "mine", "max_new_tokens": 24})
    here = Answerer(with_adapter, FixedRetriever(PASSAGES), load_model(with_adapter.llm, settings.cache_dir,
                                                                       adapters_dir=settings.adapters_dir))
    there = Answerer(remote_settings(with_adapter, url), FixedRetriever(PASSAGES))
    assert there.loaded.served == "mine"
    local, remote = here.stream(QUESTION), there.stream(QUESTION)
    local_draft, remote_draft = "".join(local), "".join(remote)
    assert remote_draft == local_draft and (remote.answer.text, remote.answer.citations) == \
           (local.answer.text, local.answer.citations)
    base = "".join(Answerer(settings.with_overrides(llm={"max_new_tokens": 24}), FixedRetriever(PASSAGES),
                            load_model(settings.llm, settings.cache_dir)).stream(QUESTION))
    assert remote_draft != base  # the adapter wrote it, not the base model
    # A path in llm.adapter names its folder; an adapter the server lacks is an error listing what it serves.
    by_path = remote_settings(settings, url, adapter=str(settings.adapters_dir / "mine"))
    assert load_model(by_path.llm, settings.cache_dir).served == "mine"
    missing = Answerer(remote_settings(settings, url, adapter="theirs"), FixedRetriever(PASSAGES))
    with pytest.raises(RemoteError, match=r"does not serve the model 'theirs'.*it serves: .*mine.*llm\.adapter"):
        missing.answer(QUESTION)


@pytest.mark.slow
def test_the_real_model_on_the_server_answers_with_a_citation_of_the_page(eval_dir, tmp_path, settings):
    """The default model served by the API, a knowledge base of one real PDF here: the answer from the server says
    what the document says, cited to the page that holds it, streamed and not."""
    from ingest import ingest_folder
    from retrieval import open_retriever
    from tests.app.test_api import PDF
    from tests.app.test_api import QUESTION as ASKED

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / PDF).write_bytes((eval_dir / "docs" / PDF).read_bytes())
    base = settings.with_overrides(kb_root=tmp_path / "kb", llm={"max_new_tokens": 64},
                                   api={"preload": False, "api_keys": (KEY,)})
    assert ingest_folder(docs, base, kb_path=tmp_path / "kb" / "docs").summary()["files_failed"] == 0
    retriever = open_retriever(base, tmp_path / "kb" / "docs")
    with serving(base) as url:
        answerer = Answerer(remote_settings(base, url), retriever)
        stream = answerer.stream(ASKED)
        draft = "".join(stream)
        done = answerer.answer(ASKED)
    for answer in (stream.answer, done):
        assert answer.found and "中国政府采购网" in answer.text, (draft, answer.text)
        cited = [c for c in answer.citations if "中国政府采购网" in c.snippet.replace("\n", "")]
        assert cited and all(c.source == PDF and c.pages for c in cited), answer.citations
    assert done.text == stream.answer.text


def test_a_reader_that_stops_early_stops_the_servers_generation(server, monkeypatch):
    """Closing the answer stream after two pieces closes the connection, and the server stops generating."""
    import time

    import engine.generate
    from tests.app.test_api import wait_idle

    url, settings = server
    steps = []
    real_forward = engine.generate.model_forward

    def slow_forward(loaded, length):  # the server is in this process: its model, slowed
        forward = real_forward(loaded, length)
        return lambda ids: steps.append(1) or time.sleep(0.01) or forward(ids)

    monkeypatch.setattr(engine.generate, "model_forward", slow_forward)
    before = httpx.get(f"{url}/health").json()["generations"]
    # Sampled, so the random model does not loop and stop by itself.
    long = remote_settings(settings, url, max_new_tokens=1000, temperature=1.0)
    stream = iter(Answerer(long, FixedRetriever(PASSAGES)).stream(QUESTION))
    next(stream), next(stream)
    stream.close()
    after = wait_idle(url)["generations"]
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"]
    assert len(steps) < 300, f"the server generated {len(steps)} tokens for a reader that left after two"
