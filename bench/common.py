"""What every benchmark prints beside its numbers: the CPU and the instruction sets that change the figures."""

from __future__ import annotations

import os

WANTED = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> str:
    """``"<model name>, <n> cores: avx2 fma ..."`` from /proc/cpuinfo (the flags of ``WANTED`` it has)."""
    model, flags = "?", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores: " + " ".join(f for f in WANTED if f in flags)
