"""A real two-sheet workbook for the tests of what a workbook's citations say (sheet and rows)."""

from __future__ import annotations

from pathlib import Path

DEADLINES = [["序号", "事项", "期限"], [1, "供应商质疑答复", "七个工作日"], [2, "采购合同备案", "二个工作日"],
             [3, "中标结果公告", "一个工作日"]]


def deadlines_workbook(path: Path, rows: list[list] = DEADLINES) -> Path:
    """``path`` (.xlsx): a sheet "说明" with one sentence in A1, then a sheet "期限表" holding ``rows``."""
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "说明"
    book.active["A1"] = "本表列出政府采购各环节的办理期限。"
    sheet = book.create_sheet("期限表")
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path
