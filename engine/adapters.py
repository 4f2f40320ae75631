"""Adapters are folders: ``adapters/NAME/`` with peft's files and ``kbchat_adapter.json`` describing them.

The metadata ties an adapter to the exact base weights it was trained on; loading it on another base is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ADAPTER_META = "kbchat_adapter.json"


class AdapterError(RuntimeError):
    pass


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    base_model: str
    base_model_sha256: str
    created_at: str = ""
    metrics: dict = field(default_factory=dict)


def read_adapter(path: Path) -> AdapterInfo:
    meta_file = Path(path) / ADAPTER_META
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{path} is not a kbchat adapter (no {ADAPTER_META})") from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{meta_file}: unreadable metadata ({exc})") from None
    return AdapterInfo(name=meta.get("name", Path(path).name), path=Path(path), base_model=meta.get("base_model", ""),
                       base_model_sha256=meta.get("base_model_sha256", ""), created_at=meta.get("created_at", ""),
                       metrics=meta.get("metrics") or {})


def list_adapters(adapters_dir) -> list[AdapterInfo]:
    """Adapters under a folder (``Settings`` is accepted too: its ``adapters_dir`` is used), by name."""
    folder = Path(getattr(adapters_dir, "adapters_dir", adapters_dir))
    if not folder.is_dir():
        return []
    return [read_adapter(p) for p in sorted(folder.iterdir()) if (p / ADAPTER_META).is_file()]


def resolve_adapter(name_or_path: str, adapters_dir: Path) -> AdapterInfo:
    candidate = Path(name_or_path)
    if not (candidate / ADAPTER_META).is_file():
        candidate = Path(adapters_dir) / name_or_path
    if not (candidate / ADAPTER_META).is_file():
        names = ", ".join(a.name for a in list_adapters(adapters_dir)) or "none"
        raise AdapterError(f"no adapter {name_or_path!r} (looked in {adapters_dir}; available: {names})")
    return read_adapter(candidate)


def check_base(info: AdapterInfo, base_model: str, base_sha256: str) -> None:
    if info.base_model_sha256 and info.base_model_sha256 != base_sha256:
        raise AdapterError(
            f"adapter {info.name!r} was trained on {info.base_model} (weights {info.base_model_sha256[:12]}…), "
            f"not on the configured model {base_model} ({base_sha256[:12]}…); configure that model or retrain")


def apply_adapter(loaded, name_or_path: str, adapters_dir: Path, *, merge: bool = False):
    """The loaded model with the adapter on top (a new ``LoadedModel``). ``merge=True`` folds the adapter into the
    base weights (plain float weights only), for backends that quantise afterwards."""
    from dataclasses import replace

    import torch
    from peft import PeftModel

    info = resolve_adapter(name_or_path, adapters_dir)
    check_base(info, loaded.model_id, loaded.base_sha256)
    if not any(isinstance(m, torch.nn.Linear) for m in loaded.model.modules()):
        raise AdapterError(f"cannot put adapter {info.name!r} on a model already quantised for the CPU "
                           f"({loaded.quantization}); load it with the adapter in the settings instead")
    model = PeftModel.from_pretrained(loaded.model, str(info.path), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return replace(loaded, model=model, adapter=info.name)
