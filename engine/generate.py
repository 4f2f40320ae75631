"""One generation, the chain every caller uses: tokenise the prompt, run the fastest forward
(``engine.forward.model_forward``), decode (``engine.decoding``), detokenise in pieces; and the same pieces
streamed from the model's compute thread, where generation runs fastest (``kbcore.compute``).
"""

from __future__ import annotations

import threading
from queue import Queue
from typing import Callable, Iterable, Iterator

from engine.decoding import DecodeOptions, decode, text_pieces
from engine.forward import model_forward
from engine.models import LoadedModel


def generate(loaded: LoadedModel, prompt: str, options: DecodeOptions) -> Iterator[str]:
    """Text pieces of the model's continuation of ``prompt`` (its stop token left out), on the calling thread. A
    remote model (``engine.remote``) streams them from its server."""
    if getattr(loaded, "remote", False):
        return loaded.generate(prompt, options)
    ids = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    forward = model_forward(loaded, ids.shape[1] + options.max_new_tokens)
    return text_pieces(loaded.tokenizer, decode(forward, ids, options))


def stream_from_compute_thread(loaded: LoadedModel, make_pieces: Callable[[], Iterable[str]]) -> Iterator[str]:
    """Iterate ``make_pieces()`` on the model's compute thread, yielding its pieces here as they come. Its
    error is raised here; closing this iterator early stops generation at the next piece."""
    pieces: Queue = Queue()
    closed = threading.Event()
    done = object()

    def run():
        try:
            for piece in make_pieces():
                if closed.is_set():
                    break
                pieces.put(piece)
        finally:
            pieces.put(done)  # unblocks the loop below; the error is re-raised from generation.result()

    generation = loaded.submit(run)
    try:
        while (piece := pieces.get()) is not done:
            yield piece
    finally:
        closed.set()
    generation.result()
