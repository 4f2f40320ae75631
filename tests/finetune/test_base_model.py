"""Which local weights `python -m finetune train` trains on: llm.model with the local backend; with backend "openai"
llm.model is only a name on the server, so only an explicit finetune.base_model, and without one an error first."""

from __future__ import annotations

import json

import pytest

from finetune.data import write_jsonl


@pytest.fixture
def cli(tmp_path, train_records):
    """Runs ``python -m finetune`` with a config of these [llm] and [finetune] lines and a 1-step training set."""
    from finetune.__main__ import main

    data = tmp_path / "train.jsonl"
    write_jsonl(train_records[:2], data)

    def run(llm: str, finetune: str = "", *command: str) -> int:
        config = tmp_path / "kbchat.toml"
        config.write_text(f'adapters_dir = "{tmp_path / "adapters"}"\ncache_dir = "{tmp_path / "cache"}"\n'
                          f'[llm]\ndevice = "cpu"\n{llm}\n[finetune]\n{finetune}\n', encoding="utf-8")
        return main(["--config", str(config), *command, "--data", str(data), "--max-seq-length", "64"])

    return run


def test_openai_backend_without_a_base_model_fails_before_any_work(cli, tiny_model_dir, tmp_path, capsys,
                                                                   monkeypatch):
    import engine.models

    loads = []
    monkeypatch.setattr(engine.models, "load_model", lambda *a, **kw: loads.append(a) or pytest.fail("loaded"))
    # The served name even names weights this machine could load; they need not be the server's, so no training.
    llm = f'backend = "openai"\nbase_url = "http://gpu-box:8000/v1"\nmodel = "{tiny_model_dir}"'
    code = cli(llm, "", "train", "--out", str(tmp_path / "adapters" / "mine"), "--max-steps", "1")
    err = capsys.readouterr().err
    assert code == 2 and not loads and not (tmp_path / "adapters" / "mine").exists()
    assert "error: llm.backend is 'openai'" in err and str(tiny_model_dir) in err
    assert "finetune.base_model" in err and "KBCHAT_FINETUNE__BASE_MODEL" in err

    # Evaluating an adapter needs the same local base.
    assert cli(llm, "", "eval", "--adapter", "mine") == 2
    assert "finetune.base_model" in capsys.readouterr().err and not loads


def test_openai_backend_trains_on_finetune_base_model(cli, tiny_model_dir, tmp_path):
    from engine.adapters import resolve_adapter

    llm = 'backend = "openai"\nbase_url = "http://gpu-box:8000/v1"\nmodel = "Qwen/Qwen2.5-7B-Instruct"'
    code = cli(llm, f'base_model = "{tiny_model_dir}"', "train", "--out", str(tmp_path / "adapters" / "mine"),
               "--max-steps", "1", "--grad-accum", "1")
    assert code == 0
    info = resolve_adapter("mine", tmp_path / "adapters")
    assert info.base_model == str(tiny_model_dir) == info.base_model_sha256
    meta = json.loads((info.path / "kbchat_adapter.json").read_text(encoding="utf-8"))
    assert meta["config"]["base_model"] == str(tiny_model_dir)


def test_local_backend_trains_on_llm_model_as_before():
    from dataclasses import replace

    from finetune.train import BaseModelError, local_base
    from kbcore.config import FinetuneSettings, LLMSettings, Settings

    settings = Settings(llm=LLMSettings(model="qwen2.5-1.5b", adapter="mine"))
    assert local_base(settings) is settings.llm
    assert local_base(replace(settings, finetune=FinetuneSettings(base_model="qwen2.5-1.5b"))) is settings.llm
    with pytest.raises(BaseModelError, match="finetune.base_model 'qwen2.5-0.5b' is for llm.backend 'openai'"):
        local_base(replace(settings, finetune=FinetuneSettings(base_model="qwen2.5-0.5b")))
    remote = replace(settings, llm=replace(settings.llm, backend="openai", base_url="http://x/v1", api_key="k"),
                     finetune=FinetuneSettings(base_model="qwen2.5-0.5b"))
    base = local_base(remote)
    assert (base.backend, base.model, base.adapter, base.base_url, base.api_key) == ("local", "qwen2.5-0.5b", None,
                                                                                      None, None)
