"""Training data: JSONL reading with line-numbered problems, answer-only labels, knowledge-base pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.data import (IGNORE_INDEX, DataError, Record, build_from_kb, data_sha256, encode, prompt_text,
                           read_jsonl)


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps({"instruction": "什么是 Debian？", "input": "", "output": "一个发行版。"}, ensure_ascii=False),
        '{"instruction": "缺了引号, "output": "x"}',
        "",
        json.dumps({"instruction": "没有答案", "input": ""}, ensure_ascii=False),
        json.dumps(["a", "list"]),
        json.dumps({"instruction": "Q2", "input": "补充", "output": "A2"}, ensure_ascii=False),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    report = read_jsonl(path)
    assert [r.output for r in report.records] == ["一个发行版。", "A2"]
    assert report.records[1].question == "Q2\n补充"
    assert [p.split(": ")[0] for p in report.problems] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert "invalid JSON" in report.problems[0] and "'output'" in report.problems[1]

    with pytest.raises(DataError, match=rf"{path.name}:2: invalid JSON"):
        read_jsonl(path, strict=True)


def test_a_file_with_nothing_usable_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable records"):
        read_jsonl(path)
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_the_shared_training_set_reads_cleanly(train_records, eval_dir):
    held = read_jsonl(eval_dir / "finetune" / "heldout.jsonl").records
    assert len(train_records) == 117 and len(held) == 29
    assert not {r.question for r in held} & {r.question for r in train_records}, "held-out pairs leak into training"
    assert data_sha256(train_records) != data_sha256(train_records[:-1])


def test_loss_is_on_answer_tokens_only(char_tokenizer, train_records):
    record = train_records[1]
    enc = encode(char_tokenizer, record, max_seq_length=4096)
    prompt = prompt_text(char_tokenizer, record)
    n_prompt = len(char_tokenizer(prompt, add_special_tokens=False)["input_ids"])

    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer_ids = [t for t in enc.labels if t != IGNORE_INDEX]
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:] == answer_ids
    assert answer_ids[-1] == char_tokenizer.eos_token_id  # the model learns to stop
    assert char_tokenizer.decode(answer_ids[:-1]) == record.output
    assert char_tokenizer.decode(enc.input_ids[:n_prompt]) == prompt
    # The same grounded prompt as the answer stage: system rules, then the question, then the assistant turn.
    assert prompt.startswith("<|im_start|>system\n你是一个严谨的知识库问答助手") and record.question in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_truncation_keeps_the_answer_and_the_end_of_the_prompt(char_tokenizer, train_records):
    record = max(train_records, key=lambda r: len(r.output))
    enc = encode(char_tokenizer, record, max_seq_length=128)
    assert len(enc.input_ids) == 128
    assert 0 < enc.answer_tokens <= 128 // 2 + 64
    n_prompt = enc.labels.index(next(t for t in enc.labels if t != IGNORE_INDEX))
    assert char_tokenizer.decode(enc.input_ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    assert char_tokenizer.decode(enc.labels[n_prompt:]) == record.output[: 128 - n_prompt]


def test_passages_are_shortened_before_the_answer(char_tokenizer):
    from finetune.data import Passage

    passage = Passage("faq.pdf", 3, 3, "第 3 章", "资料" * 400)
    record = Record("什么是 Debian？", "", "一个发行版。", (passage,))
    enc = encode(char_tokenizer, record, max_seq_length=300)
    text = char_tokenizer.decode(enc.input_ids)
    assert len(enc.input_ids) <= 300 and enc.answer_tokens == len("一个发行版。") + 1
    assert "章】\n资料" in text and "资料资料" in text and record.question in text


def _kb(tmp_path, documents):
    from kbcore.store import KnowledgeBase, NewChunk
    from kbcore.text import search_tokens

    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="test", dimension=4)
    with kb.writer() as w:
        for source, sections in documents.items():
            chunks = [NewChunk(i, i + 1, i + 1, heading, text, " ".join(search_tokens(heading + text)))
                      for i, (heading, text) in enumerate(sections)]
            w.put_document(source, content_hash=source, title=source, pages=len(chunks), chunks=chunks,
                           vectors=np.ones((len(chunks), 4), dtype=np.float32))
    return kb


def test_pairs_and_refusals_from_a_knowledge_base(tmp_path):
    from llm.prompts import NOT_FOUND

    kb = _kb(tmp_path, {
        "faq.pdf": [("第 1 章 总则", "本文档介绍 Debian 的常见问题。"),
                    ("Debian FAQ > 1.1 什么是 Debian？", "Debian 是一个自由的操作系统，由志愿者维护。"),
                    ("Debian FAQ > 1.1 什么是 Debian？", "第二段：它包含数万个软件包。"),
                    ("Debian FAQ > 1.2 如何获得安装镜像？", "从 Debian 网站下载安装镜像，刻录到 U 盘即可。")],
        "law.pdf": [("采购法 > 第二章", "第二十二条 供应商参加政府采购活动应当具备独立承担民事责任的能力。"),
                    ("采购法 > 第三章", "第二十六条 政府采购采用公开招标、邀请招标等方式。")],
    })
    records = build_from_kb(kb, refusal_ratio=0.5, seed=1)
    answers = [r for r in records if r.output != NOT_FOUND["zh"]]
    refusals = [r for r in records if r.output == NOT_FOUND["zh"]]

    assert {r.question for r in answers} == {"如何获得安装镜像？", "什么是 Debian？"}
    debian = next(r for r in answers if r.question == "什么是 Debian？")
    assert debian.output.startswith("Debian 是一个自由的操作系统")  # the first chunk under the heading
    cited = int(debian.output.rsplit("[", 1)[1].rstrip("]"))
    assert debian.passages[cited - 1].text.startswith("Debian 是一个自由的操作系统")
    assert len(refusals) == 1
    assert all(p.source == "law.pdf" for p in refusals[0].passages)  # passages that cannot answer it


def test_build_data_cli_and_kb_passages_for_instruction_pairs(tmp_path, capsys):
    from finetune.__main__ import main
    from finetune.data import attach_passages
    from kbcore.store import KnowledgeBase

    _kb(tmp_path, {
        "faq.pdf": [("FAQ > 什么是 Debian？", "Debian 是一个自由的操作系统，由志愿者维护。"),
                    ("FAQ > 如何获得安装镜像？", "从 Debian 网站下载安装镜像，刻录到 U 盘即可。")],
        "law.pdf": [("采购法 > 第二章", "第二十二条 供应商参加政府采购活动应当具备独立承担民事责任的能力。")],
    })
    out = tmp_path / "pairs.jsonl"
    assert main(["build-data", "--kb", str(tmp_path / "kb"), "--out", str(out), "--refusal-ratio", "0.5"]) == 0
    assert "3 records (1 refusals)" in capsys.readouterr().out
    records = read_jsonl(out, strict=True).records  # what build-data writes, train reads back
    assert len(records) == 3 and all(r.passages for r in records)

    plain = Record("供应商参加政府采购活动要具备什么能力？", "", "独立承担民事责任的能力。")
    unsupported = Record("供应商参加政府采购活动要具备什么能力？", "", "请咨询当地财政部门。")
    with_kb, without_support = attach_passages([plain, unsupported], KnowledgeBase(tmp_path / "kb", readonly=True),
                                               k=2)
    assert with_kb.passages[0].source == "law.pdf" and len(with_kb.passages) == 2
    # The answer copies passage 1, so it learns to cite it; an answer found in no passage gets no marker.
    assert with_kb.output == "独立承担民事责任的能力。 [1]"
    assert without_support.output == "请咨询当地财政部门。"
