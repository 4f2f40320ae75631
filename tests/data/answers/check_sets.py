"""Check the hand-written answer sets in this folder against the dev-corpus PDFs.

Run from the repository root:  python tests/data/answers/check_sets.py
(needs PyMuPDF; uses the project .venv if run with .venv/bin/python).

Checks:
  facts.jsonl         every gold phrase (NFKC, all whitespace removed) occurs on one of the
                      item's listed pages of its PDF (1-based); ids unique; required fields,
                      kinds and the `require` field are valid; list items have 2-6 phrases.
  unanswerable.jsonl  ids unique; answerable is false; kind is near|off.
Prints counts per source and kind. Exit status 1 on any problem.
The corpus folder can be overridden with KBCHAT_EVAL_DOCS (default /work/shared/eval/docs).
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = Path(os.environ.get("KBCHAT_EVAL_DOCS", "/work/shared/eval/docs"))
FACT_KINDS = {"date", "amount", "count", "name", "condition", "list", "other"}
NONE_KINDS = {"near", "off"}

# Key terms of the "near" unanswerable questions: none of them may occur anywhere in the
# extracted text of the corpus (NFKC, whitespace removed, case-sensitive). This is the
# check that the fact asked for is really absent (a term can be absent while the topic
# is mentioned nearby, e.g. 电子卖场 or cron-apt, which is what makes these "near").
NEAR_ABSENT = {
    "none-001": ["投诉费"], "none-002": ["北京"], "none-003": ["深圳"], "none-004": ["残疾人"],
    "none-005": ["监狱"], "none-006": ["节能产品"], "none-007": ["政府采购协定", "GPA"],
    "none-008": ["甲级"], "none-009": ["施工单项合同"], "none-010": ["94号", "投诉书"],
    "none-011": ["采购金额上限"], "none-012": ["费率"], "none-013": ["2024"],
    "none-014": ["质保金", "质量保证金"], "none-015": ["预付款比例不得低于"],
    "none-016": ["意向公开时间", "30日前"], "none-017": ["2023"], "none-018": ["RISC-V", "riscv"],
    "none-019": ["最低内存", "硬盘空间", "GB"], "none-020": ["LTS", "长期支持"],
    "none-021": ["Flatpak", "flatpak"], "none-022": ["Pin-Priority"], "none-023": ["signed-by"],
    "none-024": ["unattended-upgrades"], "none-025": ["compat13", "debhelper13"],
    "none-026": ["debcargo", "Rust"], "none-027": ["DebConf24"],
    "none-028": ["SecureBoot", "安全启动", "MOK"], "none-029": ["netinst镜像", "MB的"],
    "none-030": ["Btrfs", "btrfs"],
}


def norm(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def load_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path.name}:{n}: bad JSON: {e}")
    return rows


_pages_cache: dict[str, list[str]] = {}


def pdf_pages(name: str) -> list[str]:
    if name not in _pages_cache:
        try:
            import pymupdf  # noqa: PLC0415
        except ImportError:
            raise SystemExit("PyMuPDF is needed: run with the project venv (.venv/bin/python) or pip install pymupdf")

        with pymupdf.open(DOCS / name) as doc:
            _pages_cache[name] = [norm(p.get_text()) for p in doc]
    return _pages_cache[name]


def check_facts(rows: list[dict], errors: list[str]) -> None:
    seen: set[str] = set()
    for r in rows:
        rid = r.get("id", "?")
        for key in ("id", "question", "source", "pages", "answers", "kind"):
            if key not in r:
                errors.append(f"{rid}: missing field {key}")
        if rid in seen:
            errors.append(f"{rid}: duplicate id")
        seen.add(rid)
        kind = r.get("kind")
        if kind not in FACT_KINDS:
            errors.append(f"{rid}: bad kind {kind!r}")
        req = r.get("require")
        if req not in (None, "all"):
            errors.append(f"{rid}: bad require {req!r}")
        if kind == "list" and req != "all":
            errors.append(f"{rid}: list item without require=all")
        answers = r.get("answers") or []
        if not answers:
            errors.append(f"{rid}: no answers")
        if kind == "list" and not 2 <= len(answers) <= 6:
            errors.append(f"{rid}: list item needs 2-6 phrases, has {len(answers)}")
        src = r.get("source", "")
        if not (DOCS / src).is_file():
            errors.append(f"{rid}: unknown source {src!r}")
            continue
        pages = pdf_pages(src)
        for p in r.get("pages", []):
            if not isinstance(p, int) or not 1 <= p <= len(pages):
                errors.append(f"{rid}: page {p!r} out of range 1..{len(pages)}")
        listed = [pages[p - 1] for p in r.get("pages", []) if isinstance(p, int) and 1 <= p <= len(pages)]
        for a in answers:
            na = norm(a)
            if not 2 <= len(na) <= 30:
                errors.append(f"{rid}: gold phrase length {len(na)} out of range: {a!r}")
            if not any(na in t for t in listed):
                where = [i + 1 for i, t in enumerate(pages) if na in t]
                errors.append(f"{rid}: {a!r} not on pages {r.get('pages')} of {src} (found on {where})")


def check_none(rows: list[dict], errors: list[str]) -> None:
    seen: set[str] = set()
    for r in rows:
        rid = r.get("id", "?")
        if rid in seen:
            errors.append(f"{rid}: duplicate id")
        seen.add(rid)
        if not r.get("question"):
            errors.append(f"{rid}: no question")
        if r.get("answerable") is not False:
            errors.append(f"{rid}: answerable must be false")
        if r.get("kind") not in NONE_KINDS:
            errors.append(f"{rid}: bad kind {r.get('kind')!r}")
    corpus = "".join(t for pdf in sorted(DOCS.glob("*.pdf")) for t in pdf_pages(pdf.name))
    near_ids = {r.get("id") for r in rows if r.get("kind") == "near"}
    for rid in sorted(near_ids - NEAR_ABSENT.keys()):
        errors.append(f"{rid}: near item without key terms in NEAR_ABSENT")
    for rid, terms in NEAR_ABSENT.items():
        if rid not in near_ids:
            errors.append(f"{rid}: in NEAR_ABSENT but not a near item")
        for t in terms:
            if norm(t) in corpus:
                errors.append(f"{rid}: key term {t!r} does occur in the corpus")


def main() -> int:
    errors: list[str] = []
    facts = load_jsonl(HERE / "facts.jsonl")
    none = load_jsonl(HERE / "unanswerable.jsonl")
    check_facts(facts, errors)
    check_none(none, errors)
    if {r.get("id") for r in facts} & {r.get("id") for r in none}:
        errors.append("ids shared between facts.jsonl and unanswerable.jsonl")

    print(f"facts.jsonl: {len(facts)} items")
    by_src = collections.Counter(r["source"] for r in facts)
    for src, n in sorted(by_src.items()):
        print(f"  {n:4d}  {src}")
    by_kind = collections.Counter(r["kind"] for r in facts)
    print("  kinds: " + ", ".join(f"{k}={n}" for k, n in sorted(by_kind.items())))
    print(f"unanswerable.jsonl: {len(none)} items")
    by_nk = collections.Counter(r.get("kind") for r in none)
    print("  kinds: " + ", ".join(f"{k}={n}" for k, n in sorted(by_nk.items())))

    if errors:
        print(f"\n{len(errors)} problem(s):")
        for e in errors:
            print("  " + e)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
