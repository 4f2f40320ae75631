"""Answer mechanics with a tiny random Qwen2 (prompting, trimming, streaming, threshold, follow-ups), and
end-to-end answers from the real default model on the development corpus."""

import importlib

import pytest

from engine.models import load_model
from kbcore.types import Chunk, Hit
from llm.answerer import Answerer, standalone_question
from llm.citations import attribute
from llm.prompts import NOT_FOUND, QUOTED, build_messages, render_prompt

# generate() looks model_forward up in its own module, so that is where these tests replace it.
generate_module = importlib.import_module("engine.generate")


class FixedRetriever:
    """Returns the given hits; lets mechanics tests control exactly what the answer stage sees."""

    def __init__(self, hits):
        self.hits = hits
        self.queries = []

    def search(self, question, k=None, **_):
        self.queries.append(question)
        return self.hits[:k]


def hit(i, text, dense=0.95, source="a.pdf", pages=(2, 2)):
    return Hit(Chunk(i, 1, source, i, pages[0], pages[1], "法 > 第二章", text), score=1.0 / i, dense=dense)


@pytest.fixture(scope="module")
def tiny(settings, tiny_model_dir):
    tiny_settings = settings.with_overrides(llm={"model": str(tiny_model_dir), "quantization": "fp32",
                                                 "max_new_tokens": 12})
    return tiny_settings, load_model(tiny_settings.llm, tiny_settings.cache_dir)


def test_prompt_shows_each_passage_under_its_document_and_keeps_history(tiny):
    from dataclasses import replace

    _, loaded = tiny
    history = [{"role": "user", "content": "上一个问题"}, {"role": "assistant", "content": "上一个回答[1]"}]
    judged = replace(hit(2, "乙条文", source="b.pdf", pages=(3, 4)), opening="（2022）京0105民初1号\n原告：周雨敏")
    messages = build_messages("供应商要什么条件？", [hit(1, "甲条文"), judged], history)
    prompt = render_prompt(loaded.tokenizer, messages)
    assert "【法 > 第二章】\n甲条文" in prompt
    assert "【法 > 第二章 （2022）京0105民初1号 原告：周雨敏】\n乙条文" in prompt
    # Nothing a small model could copy instead of the fact: no passage numbers, file names or placeholders.
    assert "a.pdf" not in prompt and "资料1" not in prompt and "编号" not in prompt
    assert prompt.index("上一个回答") < prompt.index("供应商要什么条件")
    assert prompt.rstrip().endswith("assistant")  # ends by opening the model's turn
    english = build_messages("What is dpkg?", [hit(1, "dpkg 是……")])
    assert "in English" in english[0]["content"] and english[1]["content"].startswith("Passages:")


def test_a_hit_another_passage_already_shows_is_not_shown_twice(tiny):
    tiny_settings, loaded = tiny
    from dataclasses import replace

    widened = replace(hit(1, "第一条 甲。"), context="第一条 甲。第二条 乙。")
    taken_in, same_text_elsewhere = hit(2, "第二条 乙。"), hit(3, "第二条 乙。", source="b.pdf")
    hits = [widened, taken_in, same_text_elsewhere]
    prepared = Answerer(tiny_settings, FixedRetriever(hits), loaded).prepare("第二条规定了什么？")
    assert prepared.passages == [widened, same_text_elsewhere]
    assert prepared.hits == hits  # the sources list keeps every hit
    assert prepared.prompt.count("第二条 乙。") == 2  # once per document


def test_long_passages_are_trimmed_to_the_token_cap_never_an_error(tiny):
    tiny_settings, loaded = tiny
    capped = tiny_settings.with_overrides(llm={"max_prompt_tokens": 400})
    answerer = Answerer(capped, FixedRetriever([hit(i, f"第{i}条 " + "政府采购的规定内容。" * 60) for i in range(1, 6)]),
                        loaded)
    prepared = answerer.prepare("政府采购有哪些规定？")
    assert len(loaded.tokenizer(prepared.prompt)["input_ids"]) <= 400
    assert 1 <= len(prepared.passages) < 5
    assert prepared.passages[0].chunk.id == 1  # the best-ranked passage is the one kept


def test_streamed_pieces_make_up_the_final_answer(tiny, monkeypatch):
    tiny_settings, loaded = tiny
    answerer = Answerer(tiny_settings, FixedRetriever([hit(1, "第二十二条 供应商应当具有良好的商业信誉。")]), loaded)
    # A model that writes its answer in three pieces (the random model's text is unknowable; this one is not).
    written = ["供应商应当", "具有良好的", "商业信誉。"]
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter(written))
    stream = answerer.stream("供应商应当具备什么条件？")
    assert list(stream) == written
    assert stream.answer.found and stream.answer.degenerate is None
    assert stream.answer.text == "供应商应当具有良好的商业信誉[1]。"
    assert [(c.index, c.source, c.pages) for c in stream.answer.citations] == [(1, "a.pdf", [2])]


def test_a_generation_error_reaches_the_caller_and_the_model_thread_survives(tiny, monkeypatch):
    import threading

    tiny_settings, loaded = tiny
    callers = []

    def broken_forward(loaded, capacity):
        def forward(ids):
            callers.append(threading.current_thread())
            raise RuntimeError("out of memory while decoding")
        return forward

    retriever = FixedRetriever([hit(1, "第二十二条 供应商应当具有良好的商业信誉。")])
    with monkeypatch.context() as patch:
        patch.setattr(generate_module, "model_forward", broken_forward)
        with pytest.raises(RuntimeError, match="out of memory"):
            list(Answerer(tiny_settings, retriever, loaded).stream("供应商应当具备什么条件？"))
    # Generation ran on the model's own thread, not the caller's, and that thread still serves the real model.
    assert callers and callers[0] is not threading.current_thread()
    assert Answerer(tiny_settings, retriever, loaded).answer("供应商应当具备什么条件？").found


def test_a_reader_that_stops_early_stops_generation(tiny, monkeypatch):
    tiny_settings, loaded = tiny
    steps = []
    real_forward = generate_module.model_forward

    def counting_forward(loaded, capacity):
        inner = real_forward(loaded, capacity)
        return lambda ids: steps.append(ids.shape[1]) or inner(ids)

    long = tiny_settings.with_overrides(llm={"max_new_tokens": 200})
    answerer = Answerer(long, FixedRetriever([hit(1, "第二十二条 供应商应当具有良好的商业信誉。")]), loaded)
    monkeypatch.setattr(generate_module, "model_forward", counting_forward)
    stream = iter(answerer.stream("供应商应当具备什么条件？"))
    next(stream)
    stream.close()
    loaded.submit(lambda: None).result()  # the model thread has finished what it was doing
    assert 1 < len(steps) < 50


def test_nothing_relevant_answers_not_found_without_generating(tiny):
    tiny_settings, loaded = tiny

    class NoModel:
        def __call__(self, *_, **__):
            raise AssertionError("the model must not run when nothing relevant was retrieved")

    answerer = Answerer(tiny_settings, FixedRetriever([hit(1, "无关内容", dense=0.80)]),
                        type(loaded)(NoModel(), loaded.tokenizer, "x", "x", "cpu"))
    result = answerer.answer("法国的首都是哪里？")
    assert not result.found and result.text == NOT_FOUND["zh"] and result.citations == []
    assert answerer.answer("What is the capital of France?").text == NOT_FOUND["en"]
    empty = Answerer(tiny_settings, FixedRetriever([]), loaded).answer("什么都没有？")
    assert not empty.found


def test_a_question_about_a_name_no_document_mentions_is_refused_and_says_which(tiny, eval_retriever):
    tiny_settings, loaded = tiny

    class NoModel:
        def __call__(self, *_, **__):
            raise AssertionError("the model must not run for a name the documents never mention")

    # Close to the FAQ's passages on installing packages, so only the name tells it cannot be answered.
    answerer = Answerer(tiny_settings, eval_retriever, type(loaded)(NoModel(), loaded.tokenizer, "x", "x", "cpu"))
    result = answerer.answer("在 Debian 上怎样安装和使用 Flatpak 应用？")
    assert not result.found and result.unmentioned == ("Flatpak",) and result.citations == []
    assert result.text == NOT_FOUND["zh"] + "文档中没有提到：Flatpak。"
    # A title in 《》 that no retrieved passage is from: another regulation than those the knowledge base holds.
    other_law = answerer.answer("《政府采购质疑和投诉办法》规定投诉书必须写明哪些内容？")
    assert not other_law.found and other_law.unmentioned == ("《政府采购质疑和投诉办法》",)
    # A number no retrieved passage holds; the whole knowledge base lacks 9781 as well, so the reply says so.
    version = answerer.answer("debhelper 兼容级别 9781 有哪些新变化？")
    assert not version.found and version.unmentioned == ("9781",)
    # Names and titles the documents do hold go on to the model.
    reader = Answerer(tiny_settings, eval_retriever, loaded)
    assert reader.prepare("Debian 的 dpkg 是什么？").prompt is not None
    assert reader.prepare("《政府采购法实施条例》规定的质疑期限是多久？").prompt is not None


def test_citations_come_from_what_each_sentence_says_not_from_markers_the_model_wrote():
    passages = [hit(1, "第九条 采购文件保存十五年。"), hit(2, "第十条 保证金不超过采购预算的百分之二。", pages=(5, 5))]
    found = attribute("保证金最多2%[1]。文件要保存15年[9]。", passages, "保证金和保存期限？")
    text, citations, unsupported = found.text, found.citations, found.unsupported
    assert text == "保证金最多2%[1]。文件要保存15年[2]。"
    assert [(c.index, c.pages) for c in citations] == [(1, [5]), (2, [2])] and unsupported == []
    # A number no cited passage holds, and a sentence no passage supports, are returned to be shown as unverified.
    unsupported = attribute("保证金最多5%。天气晴朗，适合出游。", passages, "保证金多少？").unsupported
    assert any("5%" in u for u in unsupported) and any("天气晴朗" in u for u in unsupported)


def test_a_degenerate_generation_is_replaced_by_a_quote_of_the_best_passage(tiny, monkeypatch):
    """A model forced to echo the question, or to write a placeholder: the answer shown is the passage sentence
    that answers, marked as a quote and cited, and the answer records why."""
    tiny_settings, loaded = tiny
    passages = [hit(1, "第二十二条 供应商应当具有良好的商业信誉和健全的财务会计制度。第二十三条 另有规定。")]
    answerer = Answerer(tiny_settings, FixedRetriever(passages), loaded)
    question = "供应商应当具备什么条件？"
    for forced, reason in ((question, "echo"), ("供应商应当具有 [编号] 条件。", "placeholder"),
                           ("条件[1]、条件[2]、条件[3]。", "label_list")):
        monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None, forced=forced: iter([forced]))
        result = answerer.answer(question)
        assert result.degenerate == reason and result.found
        assert result.text == QUOTED["zh"] + "第二十二条 供应商应当具有良好的商业信誉和健全的财务会计制度[1]。"
        assert [c.source for c in result.citations] == ["a.pdf"]
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter(["具有良好的商业信誉。" * 4]))
    looped = answerer.answer(question)
    assert looped.degenerate == "loop" and looped.text == "具有良好的商业信誉[1]。"


def test_an_answer_without_the_quantity_asked_is_replaced_by_the_sentence_that_gives_it(tiny, monkeypatch):
    """Asked how many days, the model wrote a sentence with no number of days: it answered something else, so the
    passage sentence that states the deadline is shown instead."""
    tiny_settings, loaded = tiny
    passages = [hit(1, "第四十六条 采购人与中标供应商应当签订书面合同。中标通知书发出之日起三十日内，采购人与中标供应商应当签订合同。")]
    answerer = Answerer(tiny_settings, FixedRetriever(passages), loaded)
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter(["采购人与中标供应商应当签订书面合同。"]))
    result = answerer.answer("中标通知书发出后，要在多少天内签合同？")
    assert result.degenerate == "no_quantity" and result.found
    assert result.text == QUOTED["zh"] + "中标通知书发出之日起三十日内，采购人与中标供应商应当签订合同[1]。"


def test_a_number_read_from_the_neighbouring_clause_is_replaced_by_the_clause_that_answers(tiny, monkeypatch):
    """Asked when the contract must be signed, the model gave the complaints article's seven working days: a
    number its passage holds, from the sentence that is not about the question. The sentence that is, is shown;
    the right number from the right sentence is kept."""
    tiny_settings, loaded = tiny
    passages = [hit(1, "第四十六条 中标通知书发出之日起三十日内，采购人与中标供应商应当签订政府采购合同。"
                       "第五十二条 供应商认为采购文件使自己的权益受到损害的，可以在七个工作日内提出质疑。")]
    answerer = Answerer(tiny_settings, FixedRetriever(passages), loaded)
    question = "中标通知书发出后，要在多少天内签合同？"
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter(["应当在7个工作日内签合同。"]))
    result = answerer.answer(question)
    assert result.degenerate == "misplaced" and result.found
    assert result.text == QUOTED["zh"] + "第四十六条 中标通知书发出之日起三十日内，采购人与中标供应商应当签订政府采购合同[1]。"
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter(["应当在30日内签订合同。"]))
    kept = answerer.answer(question)
    assert kept.degenerate is None and kept.text == "应当在30日内签订合同[1]。"


def test_a_name_no_passage_holds_is_not_shown_as_fact(tiny, monkeypatch):
    """The model spelled an acronym out in words no passage holds: like a number no passage holds, the answer is
    replaced by the passage sentence on the question; a code fence's language tag is no such name."""
    tiny_settings, loaded = tiny
    passages = [hit(1, "软件包无法从源代码构建时，这个错误叫 FTBFS，即 Fails To Build From Source 的缩写。")]
    answerer = Answerer(tiny_settings, FixedRetriever(passages), loaded)
    question = "FTBFS 这个缩写的英文全称是什么？"
    monkeypatch.setattr(Answerer, "generate",
                        lambda self, prompt, options=None: iter(["软件包无法从源代码构建时，这个错误叫 FTBFS，全称是 Full Binary "
                                                                 "Tarball Format。"]))
    result = answerer.answer(question)
    assert result.degenerate == "unsupported" and "Tarball" not in result.text
    assert result.text == QUOTED["zh"] + "软件包无法从源代码构建时，这个错误叫 FTBFS，即 Fails To Build From Source 的缩写[1]。"
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter(
        ["全称是 Fails To Build From Source：\n```bash\nFTBFS\n```"]))
    assert answerer.answer(question).degenerate is None


def test_the_question_asked_back_and_the_prompts_instruction_are_not_shown(tiny, monkeypatch):
    """The model opened with the question and closed with the prompt's last line: the answer is what lies
    between; when nothing does, the answer is a quote, recorded as an echo."""
    from llm.prompts import ANSWER_RULE

    tiny_settings, loaded = tiny
    passages = [hit(1, "第二十二条 供应商应当具有良好的商业信誉和健全的财务会计制度。")]
    answerer = Answerer(tiny_settings, FixedRetriever(passages), loaded)
    question = "供应商应当具备什么条件？"
    generated = f"供应商应当具备什么条件？应当具有良好的商业信誉。{ANSWER_RULE['zh']}"
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter([generated]))
    result = answerer.answer(question)
    assert result.degenerate is None and result.text == "应当具有良好的商业信誉[1]。"
    monkeypatch.setattr(Answerer, "generate",
                        lambda self, prompt, options=None: iter([f"{question}{ANSWER_RULE['zh']}"]))
    echoed = answerer.answer(question)
    assert echoed.degenerate == "echo"
    assert echoed.text == QUOTED["zh"] + "第二十二条 供应商应当具有良好的商业信誉和健全的财务会计制度[1]。"


def test_a_question_that_asks_which_ones_is_answered_with_the_whole_list(tiny, monkeypatch):
    """Asked which conditions, the model named one of the list's items: the list the passage gives is shown,
    quoted, from its opening sentence to its last item and no further."""
    tiny_settings, loaded = tiny
    passages = [hit(1, "第二十二条 供应商参加政府采购活动应当具备下列条件：\n（一）具有独立承担民事责任的能力；\n"
                       "（二）具有良好的商业信誉和健全的财务会计制度；\n（三）有依法缴纳税收的良好记录。\n第二十三条 另有规定。")]
    answerer = Answerer(tiny_settings, FixedRetriever(passages), loaded)
    monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None: iter(["供应商应当具有良好的商业信誉。"]))
    result = answerer.answer("供应商参加政府采购要具备哪些条件？")
    assert result.degenerate == "list" and result.found
    assert result.text == QUOTED["zh"] + ("第二十二条 供应商参加政府采购活动应当具备下列条件：（一）具有独立承担民事责任的能力；"
                                          "（二）具有良好的商业信誉和健全的财务会计制度；（三）有依法缴纳税收的良好记录[1]。")
    kept = answerer.answer("供应商的商业信誉有什么用？")  # not a list question: the model's answer stands
    assert kept.degenerate is None and kept.text == "供应商应当具有良好的商业信誉[1]。"


def test_a_degenerate_generation_with_no_passage_sentence_on_the_question_is_not_found(tiny, monkeypatch):
    """No usable answer, and the best passage sentence is about something else or gives no number where one is
    asked: "not found", not a quote of a tangent."""
    tiny_settings, loaded = tiny
    passages = [hit(1, "第二十二条 供应商应当具有良好的商业信誉和健全的财务会计制度。")]
    answerer = Answerer(tiny_settings, FixedRetriever(passages), loaded)
    for question in ("采购代理机构的代理费用按什么标准收取？", "供应商的商业信誉要保持多少年？"):
        monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None, q=question: iter([q]))
        result = answerer.answer(question)
        assert not result.found and result.text == NOT_FOUND["zh"] and result.degenerate == "echo", question
    # A number of another kind is no answer either: a deadline where a fee is asked, "一开始" where a count is.
    for text, question in (("第五十五条 质疑供应商可以在答复期满后十五个工作日内向监督管理部门投诉。", "供应商投诉需要交多少投诉费？"),
                           ("如果您需要 Debian，您最好从一开始就安装 Debian 图形桌面。", "安装 Debian 图形桌面最少需要多少内存？")):
        answerer = Answerer(tiny_settings, FixedRetriever([hit(1, text)]), loaded)
        monkeypatch.setattr(Answerer, "generate", lambda self, prompt, options=None, q=question: iter([q]))
        result = answerer.answer(question)
        assert not result.found and result.text == NOT_FOUND["zh"], question


def test_look_alike_documents_the_question_does_not_name_are_not_read(tiny):
    from dataclasses import replace

    tiny_settings, loaded = tiny
    other = replace(hit(1, "月租金3600元。", source="b.pdf"), opening="（2021）沪0115民初38434号\n原告：潘浩琪\n被告：孙晨")
    named = replace(hit(2, "月租金5100元。", source="a.pdf"), opening="（2021）粤0106民初17531号\n原告：宋静\n被告：朱洋思")
    prepared = Answerer(tiny_settings, FixedRetriever([other, named]), loaded).prepare("宋静诉朱洋思的房屋租赁纠纷，月租金多少？")
    assert [p.source for p in prepared.passages] == ["a.pdf"] and "3600" not in prepared.prompt
    unnamed = Answerer(tiny_settings, FixedRetriever([other, named]), loaded).prepare("房屋租赁纠纷的月租金一般多少？")
    assert [p.source for p in unnamed.passages] == ["b.pdf", "a.pdf"]


@pytest.mark.slow
def test_follow_up_retrieves_what_the_standalone_question_does(eval_retriever):
    standalone = eval_retriever.search("招标投标法第二十三条规定了什么？", k=3)
    history = [{"role": "user", "content": "招标投标法第二十二条规定了什么？"},
               {"role": "assistant", "content": "招标人不得向他人透露已获取招标文件的潜在投标人的名称、数量……[1]"}]
    follow_up = standalone_question("那第二十三条呢？", history)
    assert "招标投标法" in follow_up
    rewritten = eval_retriever.search(follow_up, k=3)
    assert rewritten[0].source == standalone[0].source == "zhaobiao-toubiao-fa.pdf"
    assert standalone_question("评审专家的劳务报酬由谁来支付？", history) == "评审专家的劳务报酬由谁来支付？"


@pytest.mark.slow
# "auto" on an AVX2 CPU: NF4 on engine/csrc/nf4_kernel.c; int8 is the other CPU path.
@pytest.mark.parametrize("quantization", ["auto", "int8"])
def test_real_model_answers_with_the_key_fact_and_cites_the_right_page(settings, eval_retriever, quantization):
    quick = settings.with_overrides(llm={"max_new_tokens": 64, "quantization": quantization},
                                    retrieval={"top_k": 3})
    answerer = Answerer(quick, eval_retriever)
    result = answerer.answer("政府采购法规定，政府采购应当遵循哪些原则？")
    assert result.found
    assert "公开透明" in result.text
    assert any(c.source == "zhengfu-caigou-fa.pdf" and 1 in c.pages for c in result.citations), result
    absent = answerer.answer("法国的首都是哪里？")
    assert not absent.found and absent.text == NOT_FOUND["zh"]


def test_an_answer_cannot_open_with_a_banned_token_but_may_use_it_later(tiny):
    from engine.decoding import DecodeOptions, decode
    from engine.forward import model_forward

    _, loaded = tiny
    ids = loaded.tokenizer("供应商应当具备什么条件？", return_tensors="pt")["input_ids"]

    def generate(banned=()):
        options = DecodeOptions(max_new_tokens=4, banned_first=tuple(banned))
        return list(decode(model_forward(loaded, ids.shape[1] + 4), ids, options))

    free = generate()
    assert len(set(free[:2])) == 2
    assert generate([free[0]])[0] != free[0]
    # Banning the token the model picks second changes nothing: only the first position is constrained.
    assert generate([free[1]]) == free
