"""A workbook's and a deck's citations in the real app (AppTest, tiny model) name what the user looks for:
sheet and rows, or the slide, and quote that passage."""

from __future__ import annotations

import re

from tests.app.test_main import app, ask, ingest_path  # noqa: F401  (app is a fixture)

ROWS = [["序号", "事项", "期限"], [1, "供应商质疑答复", "七个工作日"], [2, "采购合同备案", "二个工作日"],
        [3, "中标结果公告", "一个工作日"]]


def test_workbook_citation_names_sheet_and_rows(app, tmp_path):  # noqa: F811
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "说明"
    book.active["A1"] = "本表列出政府采购各环节的办理期限。"
    sheet = book.create_sheet("期限表")
    for row in ROWS:
        sheet.append(row)
    book.save(tmp_path / "期限.xlsx")
    at = ingest_path(app, tmp_path / "期限.xlsx")
    ask(at, "序号: 2 | 事项: 采购合同备案 | 期限: 二个工作日")
    labels = [e.label for e in at.expander if e.label.startswith("[")]
    assert labels, "the answer cites nothing"
    for label in labels:
        assert re.fullmatch(r"\[\d+\] 期限\.xlsx · sheet (说明 row 1|期限表 rows? \d(–\d)?)", label), label
    assert any("期限表" in label for label in labels)
