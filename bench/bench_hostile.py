"""Time the parser on the hostile inputs of issue 21 (one line each); figures in bench/README.md.

``.venv/bin/python bench/bench_hostile.py``"""

import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "ingest")]
from ingest.parse import parse_file, ParseError
from kbcore.config import LimitSettings
from hostile import shared_stream_pdf
d = pathlib.Path(tempfile.mkdtemp())
def t(name, path, limits=None):
    s = time.perf_counter()
    try: parse_file(path, limits); r = "parsed"
    except ParseError as e: r = "refused: " + e.reason[:60]
    print(f"{name:40s} {1000*(time.perf_counter()-s):8.1f} ms  {r}")
for n in (2000, 10000):
    p = d / f"h{n}.md"; p.write_text("# a" + " " * n + "b\n正文\n", encoding="utf-8")
    t(f"md heading, {n} spaces (limit raised)", p, LimitSettings(max_heading_chars=10**6))
p = d / "c.html"; p.write_text("<p>正文</p>" + "<!--" * 50000); t("html 200 KB unclosed comments", p)
p = d / "t.html"; p.write_text("<p>正文</p>" + "<a" * 70000); t("html 140 KB unclosed tags", p)
t("shared-stream pdf (7 KB, 20 x 1 M chars)", shared_stream_pdf(d / "s.pdf"))
