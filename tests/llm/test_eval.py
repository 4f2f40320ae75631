"""The answer harness's metrics on hand-made answers: each one must tell a right answer from a wrong one."""

import json

import pytest

from kbcore.types import Answer, Chunk, Citation, Hit
from llm.eval import AnswerItem, grade, load_items, summarize

PASSAGE = Hit(Chunk(7, 1, "zhengfu-caigou-fa.pdf", 3, 5, 5, "政府采购法", "第四十六条 应当在中标、成交通知书发出之日起三十日内签订合同。"),
              1.0, dense=0.95)
ELSEWHERE = Hit(Chunk(9, 2, "zhaobiao-toubiao-fa.pdf", 4, 6, 6, "招标投标法", "第四十六条 自中标通知书发出之日起三十日内订立书面合同。"),
                0.9, dense=0.93)
ITEM = AnswerItem("q", "中标通知书发出后多少天内签合同？", source="zhengfu-caigou-fa.pdf", pages=(5,), answers=("三十日内",))


def cite(hit, index=1):
    return Citation(index, hit.source, hit.pages, hit.chunk.text[:20], hit.chunk.id)


def answer(text, *cited, found=True, **kw):
    return Answer(text=text, citations=[cite(h, i) for i, h in enumerate(cited, start=1)], hits=[PASSAGE, ELSEWHERE],
                  found=found, question=ITEM.question, **kw)


def test_a_right_answer_scores_on_every_metric():
    g = grade(ITEM, answer("应当在通知书发出之日起30日内签订合同[1]。", PASSAGE), 1.0)
    assert g.correct and g.precise_citations == 1 and g.right_document and not g.degenerate and not g.refused


def test_a_wrong_fact_is_not_correct():
    assert not grade(ITEM, answer("应当在七日内签订合同[1]。", PASSAGE), 1.0).correct


def test_a_citation_of_another_document_is_imprecise_and_not_the_right_document():
    g = grade(ITEM, answer("应当在三十日内订立合同[1]。", ELSEWHERE), 1.0)
    assert g.correct and g.precise_citations == 0 and not g.right_document


def test_refusals_count_right_only_for_unanswerable_questions():
    refusal = answer("文档中没有找到相关内容。", found=False)
    assert not grade(ITEM, refusal, 1.0).correct and grade(ITEM, refusal, 1.0).refused
    unanswerable = AnswerItem("n", "法国的首都是哪里？", answerable=False)
    assert grade(unanswerable, refusal, 1.0).correct
    assert not grade(unanswerable, answer("巴黎[1]。", PASSAGE), 1.0).correct


@pytest.mark.parametrize("text", ["应当在 [编号] 天内签订合同。", "中标通知书发出后多少天内签合同？[1]",
                                  "合同1（1）[1]、合同2（2）[2]、合同3（3）[3]。", "三十日内。" + "应当签订合同。" * 4, ""])
def test_degenerate_answers_are_counted(text):
    assert grade(ITEM, answer(text, PASSAGE), 1.0).degenerate


def test_list_items_need_every_part_and_references_need_recall():
    listing = AnswerItem("l", "供应商要什么条件？", answers=("商业信誉", "财务会计制度"), require_all=True)
    assert grade(listing, answer("具有良好的商业信誉和健全的财务会计制度[1]。", PASSAGE), 1.0).correct
    assert not grade(listing, answer("具有良好的商业信誉[1]。", PASSAGE), 1.0).correct
    faq = AnswerItem("f", "什么是 Debian？", reference="Debian 是一个自由的操作系统。")
    assert grade(faq, answer("Debian 是自由的操作系统[1]。", PASSAGE), 1.0).correct
    assert not grade(faq, answer("它是一种软件包格式[1]。", PASSAGE), 1.0).correct


def test_the_summary_rates_are_over_the_questions_they_concern():
    unanswerable = AnswerItem("n", "法国的首都是哪里？", answerable=False)
    grades = [grade(ITEM, answer("三十日内[1]。", PASSAGE), 1.0), grade(ITEM, answer("七日内[1]。", ELSEWHERE), 3.0),
              grade(unanswerable, answer("文档中没有找到相关内容。", found=False), 0.1)]
    row = summarize(grades)
    assert row["correct"] == 0.5 and row["citation_precision"] == 0.5 and row["refused_unanswerable"] == 1.0
    assert row["refused_answerable"] == 0.0 and row["n"] == 3 and row["p50_s"] == 1.0


def test_question_sets_load_with_their_gold(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in [
        {"id": "a", "question": "?", "source": "x.pdf", "pages": [2], "answers": ["长的短语"], "facts": ["短"]},
        {"id": "b", "question": "?", "answerable": False},
        {"id": "c", "question": "?", "answer": "参考答案", "answers": ["甲", "乙"], "require": "all"}]), "utf-8")
    a, b, c = load_items(path)
    assert a.answers == ("短",) and a.pages == (2,) and not b.answerable and c.require_all and c.reference == "参考答案"
    path.write_text('{"id": "x"}\n', "utf-8")
    with pytest.raises(ValueError, match="qa.jsonl:1"):
        load_items(path)


def test_the_shipped_answer_sets_load(eval_dir):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data" / "answers"
    facts, none = load_items(root / "facts.jsonl"), load_items(root / "unanswerable.jsonl")
    assert len(facts) >= 150 and all(i.answers and i.source and i.pages for i in facts)
    assert len(none) >= 40 and not any(i.answerable for i in none)
