"""The inference runtime: it loads a model (presets, Hugging Face ids or local folders; 4-bit NF4, int8, fp16,
bf16 or fp32; an adapter merged in) and generates text for a prompt. It knows nothing of prompts, passages or
answers: ``llm`` builds those and calls ``generate``.

- ``engine.models.load_model(settings.llm, cache_dir)``: the ``LoadedModel`` (one shared instance per setting).
- ``engine.generate.generate(loaded, prompt, options)``: text pieces; ``stream_from_compute_thread`` runs it on
  the model's thread.
- ``engine.decoding``: greedy or sampled decoding with loop guards (``DecodeOptions``); ``engine.forward``: a
  direct Llama-family forward with a static KV cache and a prompt-prefix cache on CPU (transformers' elsewhere);
  ``engine.nf4_cpu``: NF4 weights on our C kernels (``engine/csrc``, loaded by ``engine.native``), prompt inputs
  quantised to 7 bits and decoding inputs to 16 bits per block of 64; ``engine.cpu_weights``: torch's int8 and
  fp16 CPU kernels; ``engine.adapters``: LoRA adapter folders.
- ``engine.remote``: with ``llm.backend = "openai"``, ``load_model`` gives a model on an OpenAI-compatible server
  instead, which ``generate`` streams from (chat messages in, text pieces out).
"""
