"""A workbook's and a deck's citations in the real app (AppTest, tiny model) name what the user looks for:
sheet and rows, or the slide, and quote that passage."""

from __future__ import annotations

import re

from tests.app.test_main import app, ask, ingest_path  # noqa: F401  (app is a fixture)
from tests.workbooks import deadlines_workbook


def test_workbook_citation_names_sheet_and_rows(app, tmp_path):  # noqa: F811
    at = ingest_path(app, deadlines_workbook(tmp_path / "期限.xlsx"))
    ask(at, "序号: 2 | 事项: 采购合同备案 | 期限: 二个工作日")
    labels = [e.label for e in at.expander if e.label.startswith("[")]
    assert labels, "the answer cites nothing"
    for label in labels:
        assert re.fullmatch(r"\[\d+\] 期限\.xlsx · sheet (说明 row 1|期限表 rows? \d(–\d)?)", label), label
    assert any("期限表" in label for label in labels)
