"""Ingestion: files -> cleaned, split, embedded chunks in a knowledge base.

Command line: ``python -m ingest DOCS [--kb KB_DIR] [--prune] [--json] [--rebuild] [--delete NAME]``.

Python::

    from ingest import ingest_folder, delete_document, open_or_create_kb
    report = ingest_folder("docs", settings, kb_path="kb/default", prune=True)
    report.summary()["files_failed"], [(r.source, r.reason) for r in report.failures]

Reading a knowledge base (documents, chunks, search) is ``kbcore.store.KnowledgeBase``.
"""

from ingest.parse import ParseError, ParsedDocument, parse_file
from ingest.pipeline import (
    FileResult,
    IngestReport,
    delete_document,
    ingest_files,
    ingest_folder,
    open_or_create_kb,
    passage_text,
    rebuild,
)

__all__ = ["ParseError", "ParsedDocument", "parse_file", "FileResult", "IngestReport", "delete_document",
           "ingest_files", "ingest_folder", "open_or_create_kb", "passage_text", "rebuild"]
