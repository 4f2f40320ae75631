"""Evaluation and the CLI end to end on the tiny 4-bit Qwen2: base vs adapter, JSON last line, wrong-base refusal."""

from __future__ import annotations

import json

import pytest

from finetune.data import encode_all, write_jsonl
from finetune.train import train_adapter
from kbcore.config import FinetuneSettings


@pytest.fixture
def tiny_settings(tiny_model_dir, tmp_path):
    from dataclasses import replace

    from kbcore.config import LLMSettings, Settings

    return Settings(cache_dir=tmp_path / "cache", adapters_dir=tmp_path / "adapters",
                    llm=LLMSettings(model=str(tiny_model_dir), quantization="nf4", device="cpu")), replace


def test_compare_base_and_adapter_on_held_out_pairs(tiny, tiny_settings, train_records, char_tokenizer, tmp_path,
                                                    monkeypatch):
    from finetune import evaluate
    from finetune.evaluate import compare, format_table, summary_line

    settings, _ = tiny_settings
    records = train_records[:3]
    loaded = tiny()
    loaded.model_id = loaded.base_sha256 = settings.llm.model  # what load_model reports for a local directory
    config = FinetuneSettings(max_steps=6, learning_rate=1e-2, batch_size=3, gradient_accumulation_steps=1,
                         lora_dropout=0.0, max_seq_length=96)
    train_adapter(loaded, encode_all(char_tokenizer, records, 96), settings.adapters_dir / "tiny", config,
                  progress=False)

    real_generate = evaluate.generate_answers
    padded = records[1].output + "以及与问题无关的补充。"

    def known_answers(loaded, recs, options):
        # The real decoding still runs; what is scored are answers whose scores are known by construction.
        generated = real_generate(loaded, recs, options)
        assert len(generated) == len(recs) and all(isinstance(a, str) for a in generated)
        if loaded.adapter is None:
            return ["xyz"] * len(recs)  # no 4 characters of any reference: recall 0
        return [recs[0].output, padded, "xyz"]  # recall 1 (verbatim), 1 (all of it, and more), 0

    monkeypatch.setattr(evaluate, "generate_answers", known_answers)
    result = compare(settings, "tiny", records, max_seq_length=96, max_new_tokens=4)
    assert result["n"] == 3 and result["adapter"] == "tiny"
    assert result["adapter_loss"] < result["base_loss"] - 0.2  # it was trained on these very pairs
    assert (result["base_score"], result["adapter_score"]) == (0.0, 0.6667)
    assert (result["base_correct"], result["adapter_correct"]) == (0.0, 0.6667)
    assert [e["adapter"] for e in result["examples"]] == [records[0].output[:200], padded[:200], "xyz"]
    assert "answer loss" in format_table(result)
    assert set(json.loads(summary_line(result))) >= {"n", "base_loss", "adapter_loss", "base_score", "adapter_score",
                                                     "base_correct", "adapter_f1", "adapter_degenerate"}
    assert "degenerate" in format_table(result)


def test_cli_refuses_an_adapter_trained_for_another_base(tiny, tiny_model_dir, train_records, char_tokenizer,
                                                         tmp_path, capsys):
    from finetune.__main__ import main

    loaded = tiny()
    loaded.model_id, loaded.base_sha256 = "qwen2.5-1.5b", "cc324af070c2" + "0" * 52
    train_adapter(loaded, encode_all(char_tokenizer, train_records[:2], 64), tmp_path / "adapters" / "other",
                  FinetuneSettings(max_steps=1, gradient_accumulation_steps=1), progress=False)
    data = tmp_path / "held.jsonl"
    write_jsonl(train_records[:2], data)
    config = tmp_path / "kbchat.toml"
    config.write_text(f'adapters_dir = "{tmp_path / "adapters"}"\ncache_dir = "{tmp_path / "cache"}"\n'
                      f'[llm]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n', encoding="utf-8")

    code = main(["--config", str(config), "eval", "--adapter", "other", "--data", str(data), "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: adapter 'other' was trained on qwen2.5-1.5b" in err and "retrain" in err


def test_answer_metrics_tell_a_right_answer_from_a_wrong_or_degenerate_one():
    from finetune.data import Record
    from finetune.evaluate import answer_metrics

    records = [Record("什么是 Debian？", "", "Debian 是一个自由的操作系统。")] * 3
    right = answer_metrics(records[:1], ["Debian 是自由的操作系统。"])
    assert right["correct"] == 1.0 and right["f1"] > 0.8 and right["degenerate"] == 0.0
    wrong = answer_metrics(records[:2], ["它是一种软件包格式。", "什么是 Debian？"])
    assert wrong["correct"] == 0.0 and wrong["degenerate"] == 0.5  # the echo is degenerate
