"""Grounded answers from a local quantised LLM (NF4 on a GPU, int8 on a CPU), with citations, streaming and
an honest "not found".

>>> import llm                                                           # doctest: +SKIP
>>> a = llm.answer("供应商参加政府采购需要什么条件？", settings=load_settings())  # doctest: +SKIP
>>> a.found, [(c.index, c.source, c.pages) for c in a.citations]         # doctest: +SKIP
(True, [(1, 'zhengfu-caigou-fa.pdf', [2])])

Streaming: ``s = llm.stream_answer(q, history, settings=...)``; ``for piece in s: ...``; then ``s.answer``.
Models: ``llm.models.load_model`` (presets ``qwen2.5-0.5b``, ``qwen2.5-1.5b``, any HF id or local path);
adapters: ``llm.adapters.list_adapters``.
"""

from llm.answer import Answerer, AnswerStream, answer, standalone_question, stream_answer

__all__ = ["answer", "stream_answer", "Answerer", "AnswerStream", "standalone_question"]
