"""QLoRA training, as in the QLoRA paper (artidoro/qlora), in one readable loop.

The base model is frozen in 4-bit NF4 with double quantisation (``engine.models.load_model(for_training=True)``),
LoRA adapters sit on every linear layer of every block, activations are recomputed (gradient checkpointing) and the
optimizer keeps its state in 8 bits. Only the LoRA weights train.

On CPUs with AVX512-BF16 bitsandbytes repacks 4-bit weights for good on the first no-grad forward in eval mode,
after which gradients through them are silently wrong (``../shared/NOTES.md``). So: the training instance gets
``support_avx512bf16_for_cpu = False`` on every module (``engine.models.disable_bf16_repacking``), and this module never runs an
inference forward on it (no sampling or evaluation inside training; ``finetune.evaluate`` loads its own instance).

A checkpoint (``OUT/checkpoint/``: adapter weights, optimizer, scheduler, step, RNG states) is written every
``checkpoint_every`` steps and at the end; ``resume=True`` continues from it with the same losses an uninterrupted
run would have had. ``OUT/loss_log.jsonl`` gets one line per optimizer step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from finetune.data import IGNORE_INDEX, Encoded
from kbcore.config import FinetuneSettings, LLMSettings, Settings

# LoRA on all linear layers of a Qwen2/Llama block: the QLoRA paper found this is what matches full fine-tuning
# (attention-only LoRA loses quality); the output layer and embeddings stay frozen.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT = "checkpoint"
LOSS_LOG = "loss_log.jsonl"


class BaseModelError(ValueError):
    """No local base model to train an adapter on; the message names the setting to set."""


def local_base(settings: Settings) -> LLMSettings:
    """The local model adapters are trained, evaluated and merged on: ``llm`` itself with the local backend. With
    ``backend = "openai"`` ``llm.model`` is only the name a server serves, not weights this machine holds, and
    training on whatever that name loads here could give an adapter for other weights than the server's; so the
    base must be named in ``finetune.base_model``, and without it this fails before any work is done."""
    llm, base = settings.llm, settings.finetune.base_model
    if llm.backend == "local":
        if base is not None and base != llm.model:
            raise BaseModelError(
                f"finetune.base_model {base!r} is for llm.backend 'openai'; with the local backend adapters are "
                f"trained on llm.model {llm.model!r} (the model that will apply them): unset finetune.base_model "
                f"or set llm.model")
        return llm
    if not base:
        raise BaseModelError(
            f"llm.backend is {llm.backend!r}: the served model {llm.model!r} is a name on the server, not weights "
            f"on this machine; set finetune.base_model (or KBCHAT_FINETUNE__BASE_MODEL) to the same base weights "
            f"the server serves (a preset, a Hugging Face id or a local directory), since an adapter works only on "
            f"the weights it was trained on (docs/deploy.md)")
    return dataclasses.replace(llm, backend="local", model=base, adapter=None, base_url=None, api_key=None)


def config_from_settings(finetune_settings: FinetuneSettings, **overrides) -> FinetuneSettings:
    """The configured hyper-parameters with command-line overrides (``None`` means not given)."""
    return dataclasses.replace(finetune_settings, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    losses: list[float]
    seconds_per_step: float
    peak_rss_mib: float
    metrics: dict = field(default_factory=dict)


def fast_compute_dtype(model) -> str:
    """Run 4-bit layers and the rest of the model in float32 on CPUs without AVX512-BF16.

    bfloat16 is emulated there: measured on a 2-core AVX2 EPYC, a 256-token 896x4864 4-bit layer took 0.8 s forward
    and 17 s backward in bfloat16 against 0.17 s and 0.20 s in float32. On a GPU or an AVX512-BF16 CPU nothing
    changes. Returns the compute dtype in use.
    """
    import torch
    from bitsandbytes.functional import has_avx512bf16

    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if not on_cpu or has_avx512bf16():
        return "bfloat16"
    for module in model.modules():
        if hasattr(module, "compute_dtype") and hasattr(module, "quant_state"):
            module.compute_dtype = torch.float32
    for param in model.parameters():
        if param.dtype == torch.bfloat16:
            param.data = param.data.float()
    return "float32"


def add_lora(model, config: FinetuneSettings):
    """The 4-bit model prepared for k-bit training with fresh LoRA adapters on all linear layers."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from engine.models import disable_bf16_repacking

    disable_bf16_repacking(model)
    fast_compute_dtype(model)
    # Freezes the base, keeps norms in fp32 for stable training and makes the embedding output require grad so
    # gradient checkpointing has something to backpropagate through.
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(LORA_TARGETS), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing
    return model


def make_optimizer(model, config: FinetuneSettings):
    """8-bit AdamW from bitsandbytes: optimizer state in 8 bits (paged on GPU, where memory spikes page out)."""
    import bitsandbytes as bnb
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    on_gpu = any(p.is_cuda for p in params)
    cls = bnb.optim.PagedAdamW8bit if on_gpu and torch.cuda.is_available() else bnb.optim.AdamW8bit
    return cls(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def make_scheduler(optimizer, config: FinetuneSettings):
    import torch

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def collate(examples: Sequence[Encoded], pad_id: int):
    """Right-padded tensors; padding has attention 0 and no loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of an epoch: a function of seed and epoch only, so a resumed run sees the same batches."""
    order = list(range(n_examples))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def micro_batches(n_examples: int, config: FinetuneSettings, step: int) -> list[list[int]]:
    """Example indices of each micro-batch of optimizer step ``step`` (0-based)."""
    per_step = config.batch_size * config.gradient_accumulation_steps
    out = []
    for m in range(config.gradient_accumulation_steps):
        start = step * per_step + m * config.batch_size
        batch = []
        for pos in range(start, start + config.batch_size):
            epoch, index = divmod(pos, n_examples)
            batch.append(batch_order(n_examples, config.seed, epoch)[index])
        out.append(batch)
    return out


def answer_loss(model, batch) -> tuple:
    """Summed cross-entropy over answer tokens, and how many there were (a sum over tokens, not an average of
    per-example means, so long answers weigh what they contain).

    Logits are computed only from the first answer position on (``logits_to_keep``): the output layer of a
    150k-token vocabulary costs as much as a third of the model per position, and prompt positions carry no loss.
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    width = labels.shape[1]
    answer_positions = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    first = int(answer_positions[0]) if len(answer_positions) else width - 1
    keep = width - max(first, 1) + 1  # logits at position p predict token p + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    logits = logits[:, :-1].float()
    targets = labels[:, width - keep + 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, int((targets != IGNORE_INDEX).sum())


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- checkpoints

def _rng_state() -> dict:
    """The generators' states as tensors, lists and numbers only, so ``torch.load(weights_only=True)`` reads
    them back without unpickling arbitrary objects (numpy's state holds an array, Python's a tuple)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def save_checkpoint(out_dir: Path, model, optimizer, scheduler, step: int, losses: list[float]) -> None:
    """Written to a temporary folder and renamed, so a killed run leaves the previous checkpoint intact."""
    import shutil

    import torch

    final = out_dir / CHECKPOINT
    work = out_dir / (CHECKPOINT + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    model.save_pretrained(work)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               work / "trainer_state.pt")
    (work / "progress.json").write_text(json.dumps({"step": step, "losses": losses}), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)


def load_checkpoint(out_dir: Path, model, optimizer, scheduler) -> tuple[int, list[float]]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = out_dir / CHECKPOINT
    weights = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{folder}: checkpoint does not fit this model ({result.unexpected_keys[:3]}...)")
    # weights_only: tensors and plain containers only. A checkpoint folder is a file like any other, and a
    # pickle in it would run code on resume.
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    progress = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
    return progress["step"], progress["losses"]


# ---------------------------------------------------------------- the loop

def train_adapter(loaded, examples: Sequence[Encoded], out_dir: str | Path, config: FinetuneSettings, *,
                  data_sha256: str = "", resume: bool = False, progress: bool = True, stop_after: int | None = None,
                  on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train LoRA adapters on ``loaded.model`` (a 4-bit model fresh from ``load_model(for_training=True)``, or any
    causal LM for tests) and save them with their metadata in ``out_dir``.

    ``stop_after`` ends the run after that many steps (a checkpoint is written), as if it had been killed.
    """
    import torch
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("no training examples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = add_lora(loaded.model, config)
    model.train()
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    step, losses = 0, []
    log_path = out_dir / LOSS_LOG
    if resume and (out_dir / CHECKPOINT).is_dir():
        step, losses = load_checkpoint(out_dir, model, optimizer, scheduler)
        _truncate_log(log_path, step)
    elif log_path.exists():
        log_path.unlink()
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    started, first_step = time.perf_counter(), step
    bar = tqdm(total=config.max_steps, initial=step, desc="training", unit="step", disable=not progress)
    with open(log_path, "a", encoding="utf-8") as log:
        while step < config.max_steps and (stop_after is None or step - first_step < stop_after):
            tick = time.perf_counter()
            batches = [collate([examples[i] for i in b], pad_id) for b in micro_batches(len(examples), config, step)]
            tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            step_loss = 0.0
            for batch in batches:
                total, _ = answer_loss(model, batch)
                (total / tokens).backward()  # per-token mean over the whole accumulated step
                step_loss += total.item() / tokens
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(step_loss)
            seconds = time.perf_counter() - tick
            log.write(json.dumps({"step": step, "loss": round(step_loss, 6), "lr": scheduler.get_last_lr()[0],
                                  "answer_tokens": tokens, "seconds": round(seconds, 3),
                                  "rss_mib": round(peak_rss_mib())}) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if on_step:
                on_step(step, step_loss)
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                save_checkpoint(out_dir, model, optimizer, scheduler, step, losses)
    bar.close()
    if step < config.max_steps:  # stopped early on request: the checkpoint is the state to resume from
        save_checkpoint(out_dir, model, optimizer, scheduler, step, losses)
    elapsed = time.perf_counter() - started
    result = TrainResult(out_dir, step, losses, elapsed / max(1, step - first_step), peak_rss_mib())
    result.metrics = {"steps": step, "first_loss": losses[0] if losses else None,
                      "last_loss": losses[-1] if losses else None,
                      "seconds_per_step": round(result.seconds_per_step, 3), "peak_rss_mib": round(result.peak_rss_mib),
                      "examples": len(examples)}
    if step >= config.max_steps:
        save_adapter(model, out_dir, loaded, config, data_sha256, result.metrics)
    loaded.model = model  # the caller's handle now has the adapters (training only: never generate with it)
    return result


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint (steps a killed run did after it are redone)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")


def save_adapter(model, out_dir: Path, loaded, config: FinetuneSettings, data_sha256: str, metrics: dict) -> None:
    """peft's adapter files plus ``kbchat_adapter.json`` (what ``engine.adapters`` reads to list and check it)."""
    from engine.adapters import ADAPTER_META

    model.save_pretrained(out_dir)
    meta = {"name": out_dir.name, "base_model": loaded.model_id, "base_model_sha256": loaded.base_sha256,
            "data_sha256": data_sha256, "config": asdict(config), "metrics": metrics,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out_dir / ADAPTER_META).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")


def update_metrics(out_dir: Path, extra: dict) -> None:
    """Add evaluation results to an adapter's metadata."""
    from engine.adapters import ADAPTER_META

    path = Path(out_dir) / ADAPTER_META
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.setdefault("metrics", {}).update(extra)
    path.write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
