"""The inference runtime: it loads a model (presets, Hugging Face ids or local folders; 4-bit NF4, int8, bf16
or fp32; an adapter merged in) and generates text for a prompt. It knows nothing of prompts, passages or
answers: ``llm`` builds those and calls ``generate``.

- ``engine.models.load_model(settings.llm, cache_dir)``: the ``LoadedModel`` (one shared instance per setting).
- ``engine.generate.generate(loaded, prompt, options)``: text pieces; ``stream_from_compute_thread`` runs it on
  the model's thread.
- ``engine.decoding``: greedy or sampled decoding with loop guards (``DecodeOptions``); ``engine.forward``: a
  direct Llama-family forward with a static KV cache and a prompt-prefix cache on CPU (transformers' elsewhere);
  ``engine.nf4_cpu`` / ``engine.cpu_kernels`` / ``engine.native``: the CPU 4-bit path and its C kernels
  (``engine/csrc``); ``engine.adapters``: LoRA adapter folders.
"""
