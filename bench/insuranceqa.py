"""Build a colloquial retrieval set from InsuranceQA-zh: ``python bench/insuranceqa.py DIR [--answers N]``.

``insuranceqa-data==1.2`` (PyPI; GPL-3.0, research use) holds 27,413 Chinese insurance answers and questions
asked by ordinary people, each with the ids of its correct answers, set by the dataset's authors. It is fetched
at run time with ``pip download`` into ``DIR/cache`` and never committed. This writes

- ``DIR/docs/a<id>.txt``: one answer per file, the corpus to ingest (``python -m ingest DIR/docs --kb DIR/kb``);
- ``DIR/valid.jsonl`` and ``DIR/test.jsonl``: the questions, ``source`` listing every correct answer's file.

Tune on ``valid``, check on ``test``. ``--answers N`` keeps the first N answers plus every gold answer of the
kept questions, for a smaller corpus; ``--questions M`` keeps M questions per split (the first M).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "insuranceqa-data==1.2"


def fetch(cache: Path) -> Path:
    """The folder holding the package's ``*.json.gz`` files, downloaded once into ``cache``."""
    data = cache / "insuranceqa_data-1.2" / "insuranceqa_data"
    if not (data / "answers.json.gz").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE,
                        "-d", str(cache)], check=True)
        with tarfile.open(cache / "insuranceqa_data-1.2.tar.gz") as tar:
            tar.extractall(cache, filter="data")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--answers", type=int, default=0, help="corpus size (0: all 27,413 answers)")
    parser.add_argument("--questions", type=int, default=0, help="questions per split (0: all 2,000)")
    args = parser.parse_args(argv)

    data = fetch(args.dir / "cache")
    answers = json.loads(gzip.open(data / "answers.json.gz").read())
    splits = {name: list(json.loads(gzip.open(data / f"{name}.json.gz").read()).values())
              for name in ("valid", "test")}
    if args.questions:
        splits = {name: items[:args.questions] for name, items in splits.items()}
    keep = set(answers)
    if args.answers:
        keep = set(list(answers)[:args.answers]) | {a for items in splits.values() for q in items for a in q["answers"]}
    docs = args.dir / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for answer_id in keep:
        path = docs / f"a{answer_id}.txt"
        text = answers[answer_id]["zh"].strip() + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    for name, items in splits.items():
        with open(args.dir / f"{name}.jsonl", "w", encoding="utf-8") as out:
            for n, q in enumerate(items):
                out.write(json.dumps({"id": f"{name}-{n}", "question": q["zh"].strip(),
                                      "source": [f"a{a}.txt" for a in q["answers"]]}, ensure_ascii=False) + "\n")
    print(f"{len(keep)} answers in {docs}; " + ", ".join(f"{len(v)} {k} questions" for k, v in splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
