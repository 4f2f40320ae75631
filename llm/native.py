"""Our C kernels for CPUs with AVX2 and FMA, compiled on first use with the system C compiler.

- ``nf4_kernel.c``: products with bitsandbytes' NF4 weights (``llm.nf4_cpu``).
- ``decode_ops.c``: a Llama-family layer's steps around its products: the small ones of decoding one token,
  and a prompt's causal attention (``llm.forward``).

They are built into one shared library in ``<cache>/kernels``, named by a hash of the sources and the compiler,
and loaded with ctypes. Where the CPU lacks AVX2/FMA or no compiler works, ``load_native`` returns None, says why
in the log, and callers keep their torch or bitsandbytes path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("nf4_kernel.c", "decode_ops.c"))
HEADERS = (Path(__file__).with_name("nf4_prompt_tile.h"),)


class NF4Weight(ctypes.Structure):
    """``nf4_weight`` of nf4_kernel.c: where one matrix's codes and scales lie, and its shape."""

    _fields_ = [("packed", ctypes.c_void_p), ("qabsmax", ctypes.c_void_p), ("absmax2", ctypes.c_void_p),
                ("code2", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("table", ctypes.c_void_p),
                ("offset", ctypes.c_float), ("rows", ctypes.c_int64), ("cols", ctypes.c_int64)]


_pointer, _size, _float, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
SIGNATURES = {
    "nf4_linear": [ctypes.POINTER(NF4Weight), _size, _pointer, _pointer, _size, _pointer, _pointer, _int],
    "nf4_prompt_linear": [ctypes.POINTER(NF4Weight), _size, _pointer, _pointer, _pointer, _size, _pointer, _pointer,
                          _pointer, _int, _int, _int],
    "nf4_prompt_has_vnni": [],
    "nf4_dequantize": [ctypes.POINTER(NF4Weight), _pointer, _pointer, _int],
    "nf4_encode": [_pointer, _size, _pointer, _pointer, _pointer, _int],
    "add_rms_norm": [_pointer, _pointer, _pointer, _float, _pointer, _size],
    "silu_mul": [_pointer, _pointer, _size, _size, _int],
    "decode_attention": [_pointer, _pointer, _pointer, _pointer, _pointer, _size, _size, _size, _size, _size,
                         _float, _pointer, _pointer, _int],
    "prefill_attention": [_pointer, _size, _pointer, _pointer, _size, _size, _size, _size, _size, _size, _float,
                          _pointer, _int],
}
RETURNS = {"nf4_prompt_has_vnni": _int}  # the others return nothing

_library: ctypes.CDLL | None = None
_lock = threading.Lock()


def cpu_supports_native() -> bool:
    flags = Path("/proc/cpuinfo").read_text(errors="ignore").split() if Path("/proc/cpuinfo").exists() else []
    return "avx2" in flags and "fma" in flags


def load_native(cache_dir: Path) -> ctypes.CDLL | None:
    """The kernels' library, built on first use into ``cache_dir/kernels``; None where it can't be built here."""
    global _library
    with _lock:
        if _library is not None:
            return _library
        if not cpu_supports_native():
            log.info("C kernels: this CPU lacks AVX2/FMA; torch's and bitsandbytes' own paths are used")
            return None
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            log.warning("C kernels: no C compiler found; torch's and bitsandbytes' own (slower) paths are used")
            return None
        digest = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES + HEADERS) + compiler.encode()).hexdigest()[:16]
        target = Path(cache_dir) / "kernels" / f"kbchat-{digest}.so"
        if not target.is_file() and not _compile(compiler, target):
            return None
        library = ctypes.CDLL(str(target))
        for name, arguments in SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes, function.restype = arguments, RETURNS.get(name)
        _library = library
        return library


def _compile(compiler: str, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [compiler, "-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", *map(str, SOURCES), "-o",
               partial, "-lm"]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        failure = result.stderr[-2000:] if result.returncode else None
    except OSError as error:
        failure = str(error)
    if failure is not None:
        os.unlink(partial)
        log.warning("C kernels: compiling with %s failed, torch's and bitsandbytes' own (slower) paths are "
                    "used:\n%s", compiler, failure)
        return False
    os.replace(partial, target)  # another process building the same library at once is harmless
    return True
