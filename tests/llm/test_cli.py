"""``python -m llm ask --json`` on a real workbook knowledge base (tiny random model): each citation says where to
look as the app does, sheet and rows, beside the encoded row numbers."""

from __future__ import annotations

import json
import re

import pytest

from tests.workbooks import DEADLINES, deadlines_workbook

pytestmark = pytest.mark.slow


def test_ask_json_names_the_sheet_and_rows_of_a_workbook(tmp_path, monkeypatch, capsys, tiny_model_dir):
    from ingest.pipeline import ingest_folder
    from kbcore.config import load_settings
    from llm.__main__ import main

    for name in ("KBCHAT_LLM__MODEL", "KBCHAT_LLM__QUANTIZATION", "KBCHAT_LLM__MAX_NEW_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "docs").mkdir()
    deadlines_workbook(tmp_path / "docs" / "期限.xlsx", DEADLINES[:3])
    ingest_folder(tmp_path / "docs", load_settings(env={}, use_default_file=False), kb_path=tmp_path / "kb")

    config = tmp_path / "kbchat.toml"
    config.write_text(f'[llm]\nmodel = "{tiny_model_dir}"\nquantization = "fp32"\nmax_new_tokens = 8\n',
                      encoding="utf-8")
    assert main(["ask", "序号: 2 | 事项: 采购合同备案 | 期限: 二个工作日", "--kb", str(tmp_path / "kb"),
                 "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["citations"], result
    for citation in result["citations"]:
        assert re.fullmatch(r"sheet (说明 row 1|期限表 rows? \d(–\d)?)", citation["location"]), citation
        assert all(page > 1_000_000 for page in citation["pages"])
