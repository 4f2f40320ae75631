"""``python -m llm ask "问题" [--kb KB_DIR] [--adapter NAME] [--json]``

Streams the answer, then lists its sources. With ``--json`` the last line is one JSON object:
``{"answer", "found", "citations": [{"source", "pages", "location", "snippet"}], "search_query"}``. ``location`` is
what a reader looks for ("pp. 4–5", "slide 3", "sheet 销售 rows 5–7"); a workbook's ``pages`` are its encoded
row numbers (``kbcore.locations.sheet_row_page``)."""

from __future__ import annotations

import argparse
import json
import sys

from kbcore.config import load_settings
from kbcore.locations import location_label
from kbcore.store import KnowledgeBaseError
from engine.adapters import AdapterError
from engine.models import ModelProvisionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer a question from a knowledge base, with citations")
    ask.add_argument("question")
    ask.add_argument("--kb", help="knowledge-base folder (default: the configured one)")
    ask.add_argument("--adapter", help="adapter name under adapters/ or a path")
    ask.add_argument("--model", help="model preset, Hugging Face id or local directory")
    ask.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ask.add_argument("--config", help="TOML settings file")
    args = parser.parse_args(argv)

    from llm.answerer import stream_answer

    settings = load_settings(args.config)
    overrides = {k: v for k, v in (("adapter", args.adapter), ("model", args.model)) if v}
    if overrides:
        settings = settings.with_overrides(llm=overrides)
    try:
        stream = stream_answer(args.question, settings=settings, kb=args.kb)
        for piece in stream:
            print(piece, end="", flush=True)
        print()
    except (KnowledgeBaseError, AdapterError, ModelProvisionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = stream.answer
    headings = {h.chunk.id: h.heading for h in result.hits}  # a workbook's sheet is named by its heading
    locations = [location_label(c.source, c.pages, headings.get(c.chunk_id, "")) for c in result.citations]
    if result.citations:
        print("\n来源 / Sources:")
        for c, where in zip(result.citations, locations):
            print(f"  [{c.index}] {c.source} {where}: {c.snippet[:80]}")
    if args.json:
        print(json.dumps({"answer": result.text, "found": result.found, "search_query": result.search_query,
                          "citations": [{"source": c.source, "pages": c.pages, "location": where,
                                         "snippet": c.snippet} for c, where in zip(result.citations, locations)]},
                         ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
