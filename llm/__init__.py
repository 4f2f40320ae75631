"""Grounded answers: what a small model reads (``passages``), how it is asked (``prompts``), the checks on
what it says (``checks``) and the citations drawn from the evidence (``citations``), all run by the answer stage
(``llm.answerer``) over a retriever and the inference runtime (``engine``); ``llm.eval`` is the answer harness.

>>> import llm                                                           # doctest: +SKIP
>>> a = llm.answer("供应商参加政府采购需要什么条件？", settings=load_settings())  # doctest: +SKIP
>>> a.found, [(c.index, c.source, c.pages) for c in a.citations]         # doctest: +SKIP
(True, [(1, 'zhengfu-caigou-fa.pdf', [2])])

Streaming: ``s = llm.stream_answer(q, history, settings=...)``; ``for piece in s: ...``; then ``s.answer``.
"""

from llm.answerer import Answerer, AnswerStream, answer, standalone_question, stream_answer

__all__ = ["answer", "stream_answer", "Answerer", "AnswerStream", "standalone_question"]
