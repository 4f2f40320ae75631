"""One thread for the process's torch compute.

Every thread that runs torch ops on a CPU gets an OpenMP pool of its own. Once a second pool existed, the LLM
decoded markedly slower from the first query embedded on another thread onwards, for good; embedding the query
on the model's thread kept its speed (bench/bench_llm.py embeds a question before each prompt, as retrieval
does). So models load and generate, and queries and passages are embedded, on this one thread.

>>> run(lambda: threading.current_thread().name).startswith(THREAD_NAME)
True
>>> run(run, lambda: "nested calls run at once")
'nested calls run at once'
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

THREAD_NAME = "kbchat-compute"
_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def on_compute_thread() -> bool:
    return threading.current_thread().name.startswith(THREAD_NAME)


def submit(fn, /, *args, **kwargs) -> Future:
    """Run ``fn`` on the compute thread, one call at a time, and return its future. Called from the compute
    thread itself, ``fn`` runs at once (a queued call would wait for its caller forever)."""
    global _executor
    if on_compute_thread():
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the caller sees it from result(), as from the executor
            future.set_exception(exc)
        return future
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
    return _executor.submit(fn, *args, **kwargs)


def run(fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the compute thread; its result, or its exception raised here."""
    return submit(fn, *args, **kwargs).result()
