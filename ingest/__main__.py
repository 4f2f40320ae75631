"""``python -m ingest DOCS [--kb KB_DIR] [--prune] [--json] [--rebuild] [--delete NAME] [--config FILE]
[--no-ocr] [--ocr-language ch]``

Exit status: 0 when every file ingested (or was skipped), 1 when any file failed, 2 on usage or
knowledge-base errors (another ingest running, a knowledge base built with another embedding model, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ingest.pipeline import STAGES, FileResult, IngestReport, delete_document, ingest_folder, rebuild
from kbcore.config import load_settings
from kbcore.store import KnowledgeBase, KnowledgeBaseError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Build or update a knowledge base from a folder of PDF, Word, Excel, PowerPoint, .txt, .md "
                    "and .html files, and through OCR scanned PDFs and images (.png, .jpg, .tif).")
    p.add_argument("docs", nargs="?", type=Path, help="folder to ingest (its files' paths become source names)")
    p.add_argument("--kb", type=Path, help="knowledge-base folder (default: from settings, kb/default)")
    p.add_argument("--prune", action="store_true", help="delete documents whose file is gone from DOCS")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    p.add_argument("--rebuild", action="store_true",
                   help="re-embed all stored chunks with the configured embedding model (no re-parsing)")
    p.add_argument("--delete", metavar="NAME", action="append", default=[],
                   help="remove the document with this source name (repeatable)")
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-ocr", dest="ocr", action="store_false", default=None,
                   help="no OCR this run (setting ingest.ocr, on by default): scanned PDFs fail, images are skipped")
    p.add_argument("--ocr-language", choices=["ch"],
                   help="OCR recognition language (setting ingest.ocr_language; 'ch': Chinese with English)")
    return p


class _ProgressBar:
    """tqdm over files, with pages and chunks of the run in the postfix; a second bar over OCR pages, the
    slow part, appears when a file needs OCR."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.ocr_bar = None
        self.enabled = enabled
        self.pages = self.chunks = self.embedded = 0

    def ocr(self, queued: int, done: int) -> None:
        """Called from the thread that parses: ``queued`` more pages to OCR, ``done`` more read."""
        if not self.enabled:
            return
        if self.ocr_bar is None:
            from tqdm import tqdm

            self.ocr_bar = tqdm(total=0, unit="page", desc="OCR", file=sys.stderr, dynamic_ncols=True, position=1)
        if queued:
            self.ocr_bar.total += queued
            self.ocr_bar.refresh()
        if done:
            self.ocr_bar.update(done)

    def embedded_some(self, n: int) -> None:
        """Keeps the bar moving while a long document is embedded."""
        self.embedded += n
        if self.bar is not None:
            self.bar.set_postfix(pages=self.pages, chunks=self.chunks, embedded=self.embedded)

    def __call__(self, done: int, total: int, source: str, result: FileResult | None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)
        if result is None:
            self.bar.set_description(source[-40:])
            return
        self.pages += result.pages
        self.chunks += result.chunks
        self.bar.set_postfix(pages=self.pages, chunks=self.chunks, embedded=self.embedded, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.ocr_bar is not None:
            self.ocr_bar.close()
        if self.bar is not None:
            self.bar.set_description("done")
            self.bar.close()


def _rebuild_bar(enabled: bool):
    state = {}

    def update(done: int, total: int) -> None:
        if not enabled:
            return
        if "bar" not in state:
            from tqdm import tqdm

            state["bar"] = tqdm(total=total, unit="chunk", desc="re-embedding", file=sys.stderr)
        state["bar"].update(done - state["bar"].n)
        if done >= total:
            state["bar"].close()

    return update


def format_summary(report: IngestReport) -> str:
    s = report.summary()
    rows = [("files added", s["files_added"]), ("files updated", s["files_updated"]),
            ("files skipped", s["files_skipped"]), ("files failed", s["files_failed"]),
            ("files deleted", s["files_deleted"]), ("pages", s["pages"]), ("chunks", s["chunks"]),
            ("chunks embedded", s["chunks_embedded"]), ("pages OCR'd", s["ocr_pages"]),
            ("pages OCR'd before", s["ocr_pages_cached"]), ("seconds", f"{report.seconds:.2f}")]
    rows += [(f"  {stage} s", f"{report.stage_seconds[stage]:.2f}") for stage in STAGES]
    width = max(len(k) for k, _ in rows)
    lines = [f"knowledge base: {report.kb_path}"] + [f"{k:<{width}}  {v:>8}" for k, v in rows]
    lines += [f"note: {note}" for note in report.notes]
    for r in report.failures:
        lines.append(f"FAILED {r.source}: {r.reason}")
    unsupported = [r for r in report.results if r.status == "skipped" and r.reason != "unchanged"]
    for r in unsupported:
        lines.append(f"skipped {r.source}: {r.reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        overrides = {k: v for k, v in (("ocr", args.ocr), ("ocr_language", args.ocr_language)) if v is not None}
        settings = settings.with_overrides(ingest=overrides) if overrides else settings
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kb_path = args.kb or settings.kb_path
    try:
        if args.delete:
            if not KnowledgeBase.exists(kb_path):
                raise KnowledgeBaseError(f"no knowledge base at {kb_path}")
            missing = [name for name in args.delete if not delete_document(kb_path, name)]
            for name in missing:
                print(f"error: no document named {name!r} in {kb_path}", file=sys.stderr)
            if args.json:
                print(json.dumps({"deleted": len(args.delete) - len(missing), "missing": missing},
                                 ensure_ascii=False))
            return 2 if missing else 0
        if args.rebuild:
            count = rebuild(kb_path, settings, progress=_rebuild_bar(enabled=not args.quiet))
            print(f"re-embedded {count} chunks in {kb_path}", file=sys.stderr)
            if args.docs is None:
                if args.json:
                    print(json.dumps({"rebuilt_chunks": count}, ensure_ascii=False))
                return 0
        if args.docs is None:
            parser.print_usage(sys.stderr)
            print("error: give a folder to ingest, or --delete NAME, or --rebuild", file=sys.stderr)
            return 2
        if not args.docs.is_dir():
            print(f"error: {args.docs} is not a folder", file=sys.stderr)
            return 2
        bar = _ProgressBar(enabled=not args.quiet)
        try:
            report = ingest_folder(args.docs, settings, kb_path=kb_path, prune=args.prune, progress=bar,
                                   on_embedded=bar.embedded_some, on_ocr=bar.ocr)
        finally:
            bar.close()
    except KnowledgeBaseError as exc:  # an EmbeddingMismatchError among them
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(report))
    if args.json:
        print(json.dumps(report.summary(), ensure_ascii=False))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
