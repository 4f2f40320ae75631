"""Look-alike court judgments: many PDFs from one template, told apart only by names, case numbers and figures.

Each judgment is three pages: the parties and case number (page 1), the facts the court found, with the parties
called only 原告/被告 as judgments often do (page 2), and the decision (page 3). Each has two questions: one
that names the parties and asks a fact on page 2, one that gives the case number and asks about page 3, so the
page that answers never holds what tells the documents apart. ``answers`` are the retrieval hit rule's phrases,
``facts`` the value alone that a correct answer states (``llm.eval``). Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红建国志文斌海波宁浩宇晨欣怡思雨嘉琪"
DISTRICTS = ["东城区建国路", "西城区复兴路", "海淀区学院路", "朝阳区光华路", "南山区科技园", "天河区体育西路"]
FIRMS = ["正义", "明德", "天平", "方圆", "信达"]
COURTS = [("北京市朝阳区人民法院", "京0105", "北京市第三中级人民法院"),
          ("上海市浦东新区人民法院", "沪0115", "上海市第一中级人民法院"),
          ("广州市天河区人民法院", "粤0106", "广州市中级人民法院")]


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        if name not in used:
            used.add(name)
            return name


def _loan(case: dict, rng: random.Random) -> tuple[list[str], list[dict]]:
    amount, rate, term, paid = rng.randrange(30, 900) * 1000, rng.choice((0.8, 1.0, 1.2, 1.5)), rng.choice(
        (6, 12, 18, 24)), rng.randrange(2, 30) * 100
    fee = round(amount * 0.01 + 50)
    p, d = case["plaintiff"], case["defendant"]
    pages = [
        f"原告{p}与被告{d}民间借贷纠纷一案，本院于{case['filed']}立案后，依法适用简易程序，公开开庭进行了审理。"
        f"原告{p}、被告{d}到庭参加诉讼。本案现已审理终结。\n原告向本院提出诉讼请求：1.判令被告偿还借款本金及利息；"
        "2.本案诉讼费用由被告负担。事实和理由：原告与被告系朋友关系，被告因资金周转需要向原告借款，到期后经原告多次"
        "催要，被告未予偿还。",
        "被告辩称，对借款事实无异议，但因经营困难暂时无力偿还，请求法院酌情减少利息。\n本院经审理认定事实如下："
        f"{case['fact_date']}，被告向原告借款{amount}元，双方签订借款合同，约定借款期限为{term}个月，月利率{rate}%。"
        f"原告通过银行转账方式向被告交付了上述款项。借款到期后，被告仅偿还利息{paid}元，其余款项至今未还。\n"
        "上述事实，有借款合同、银行转账凭证及当事人陈述等证据在案佐证，本院予以确认。",
        "本院认为，合法的借贷关系受法律保护。原告与被告之间的借贷关系合法有效，被告未按约定偿还借款，应承担相应的"
        "民事责任。双方约定的利率未超过合同成立时一年期贷款市场报价利率四倍，本院予以支持。依照《中华人民共和国民法典》"
        f"第六百七十五条、第六百七十六条之规定，判决如下：\n一、被告{d}于本判决生效之日起十日内偿还原告{p}借款本金"
        f"{amount}元及利息；\n二、驳回原告的其他诉讼请求。\n案件受理费{fee}元，减半收取{fee // 2}元，由被告负担。",
    ]
    questions = [
        dict(question=f"原告{p}与被告{d}的借贷纠纷中，双方约定的月利率是多少？", pages=[2], answers=[f"月利率{rate}%"],
             facts=[f"{rate}%"]),
        dict(question=f"{case['number']}判决书里，案件受理费是多少、由谁负担？", pages=[3],
             answers=[f"案件受理费{fee}元"], facts=[f"{fee}元"]),
    ]
    return pages, questions


def _lease(case: dict, rng: random.Random) -> tuple[list[str], list[dict]]:
    rent, months, deposit = rng.randrange(20, 150) * 100, rng.randrange(2, 12), rng.randrange(2, 9) * 1000
    fee = round(rent * months * 0.01 + 50)
    p, d = case["plaintiff"], case["defendant"]
    pages = [
        f"原告{p}与被告{d}房屋租赁合同纠纷一案，本院于{case['filed']}立案后，依法适用简易程序，公开开庭进行了审理。"
        f"原告{p}到庭参加诉讼，被告{d}经本院合法传唤无正当理由拒不到庭。本案现已审理终结。\n原告向本院提出诉讼请求："
        "1.判令解除双方签订的房屋租赁合同；2.判令被告支付拖欠的租金；3.本案诉讼费用由被告负担。事实和理由：被告承租"
        "原告的房屋后，未按约定支付租金，经原告多次催告仍未支付。",
        "被告未作答辩，亦未提交证据。\n本院经审理认定事实如下："
        f"{case['fact_date']}，原告与被告签订房屋租赁合同，约定被告承租原告所有的住房一套，月租金{rent}元，"
        f"押金{deposit}元，租金按月支付。合同签订后，原告依约交付了房屋。自合同履行第三个月起，被告连续{months}个月"
        "未支付租金。\n上述事实，有房屋租赁合同、催告函及原告陈述等证据在案佐证，本院予以确认。",
        "本院认为，原告与被告签订的房屋租赁合同系双方真实意思表示，合法有效。被告未按约定支付租金，经催告后在合理"
        "期限内仍未支付，原告有权解除合同。依照《中华人民共和国民法典》第七百二十二条之规定，判决如下：\n"
        f"一、解除原告{p}与被告{d}签订的房屋租赁合同；\n二、被告{d}于本判决生效之日起十日内支付原告{p}租金"
        f"{rent * months}元；\n三、驳回原告的其他诉讼请求。\n案件受理费{fee}元，由被告负担。",
    ]
    questions = [
        dict(question=f"{p}诉{d}的房屋租赁合同纠纷，合同约定的月租金是多少？", pages=[2], answers=[f"月租金{rent}元"],
             facts=[f"{rent}元"]),
        dict(question=f"{case['number']}案件中，法院判决被告支付多少租金？", pages=[3],
             answers=[f"租金{rent * months}元"], facts=[f"{rent * months}元"]),
    ]
    return pages, questions


def write_judgments(folder: Path, count: int = 24, seed: int = 7) -> list[dict]:
    """Write ``count`` judgment PDFs into ``folder``; return their questions in the ../shared/eval QA format."""
    import pymupdf

    rng = random.Random(seed)
    used: set[str] = set()
    folder.mkdir(parents=True, exist_ok=True)
    qa = []
    for i in range(count):
        court, code, upper = COURTS[i % len(COURTS)]
        year = rng.choice((2021, 2022, 2023))
        case = dict(plaintiff=_name(rng, used), defendant=_name(rng, used),
                    number=f"（{year}）{code}民初{rng.randrange(1000, 39999)}号",
                    filed=f"{year}年{rng.randrange(1, 13)}月{rng.randrange(1, 29)}日",
                    fact_date=f"{year - 2}年{rng.randrange(1, 13)}月{rng.randrange(1, 29)}日")
        pages, questions = (_loan if i % 2 == 0 else _lease)(case, rng)
        header = f"{court}\n民 事 判 决 书\n{case['number']}\n"
        city = court[:3]
        parties = (f"原告：{case['plaintiff']}，{rng.choice('男女')}，{year - rng.randrange(25, 60)}年"
                   f"{rng.randrange(1, 13)}月{rng.randrange(1, 29)}日出生，汉族，住{city}{rng.choice(DISTRICTS)}。\n"
                   f"委托诉讼代理人：{_name(rng, used)}，{city}{rng.choice(FIRMS)}律师事务所律师。\n"
                   f"被告：{case['defendant']}，{rng.choice('男女')}，{year - rng.randrange(25, 60)}年"
                   f"{rng.randrange(1, 13)}月{rng.randrange(1, 29)}日出生，汉族，住{city}{rng.choice(DISTRICTS)}。\n")
        pages[0] = header + parties + pages[0]
        pages[2] += f"\n如不服本判决，可以在判决书送达之日起十五日内向本院递交上诉状，上诉于{upper}。\n审判员 " \
            f"{_name(rng, used)}\n书记员 {_name(rng, used)}"
        name = f"judgment-{i + 1:02d}.pdf"
        doc = pymupdf.open()
        for text in pages:
            page = doc.new_page()
            page.insert_textbox((60, 60, 535, 780), text, fontname="china-s", fontsize=11)
        doc.save(folder / name)
        qa += [dict(id=f"{name[:-4]}-q{n}", source=name, **q) for n, q in enumerate(questions, start=1)]
    return qa


if __name__ == "__main__":  # python tests/retrieval/judgments.py OUT_DIR: the PDFs and qa.jsonl beside them
    import sys

    out = Path(sys.argv[1])
    items = write_judgments(out / "docs")
    (out / "qa.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in items), "utf-8")
