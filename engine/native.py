"""Our C kernels for CPUs with AVX2 and FMA, compiled on first use with the system C compiler.

- ``nf4_kernel.c``: products with bitsandbytes' NF4 weights (``engine.nf4_cpu``).
- ``decode_ops.c``: a Llama-family layer's steps around its products: the small ones of decoding one token,
  and a prompt's causal attention (``engine.forward``).

They are built into one shared library in ``<cache>/kernels``, named by a hash of the sources, the compiler's
path and version and the build flags, and loaded with ctypes. Where the CPU lacks AVX2/FMA, no compiler works, or
the library cannot be loaded (cut short, missing a symbol, on a noexec mount) even after one fresh build,
``load_native`` returns None, says why in the log, and callers keep their torch or bitsandbytes path.
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

from kbcore.hashing import file_sha256

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).parent / "csrc" / name for name in ("nf4_kernel.c", "decode_ops.c"))
# Every header, so that the build key covers whatever the sources include.
HEADERS = tuple(sorted((Path(__file__).parent / "csrc").glob("*.h")))


class NF4Weight(ctypes.Structure):
    """``nf4_weight`` of csrc/kernels.h: where one matrix's codes and scales lie, and its shape."""

    _fields_ = [("packed", ctypes.c_void_p), ("qabsmax", ctypes.c_void_p), ("absmax2", ctypes.c_void_p),
                ("code2", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("table", ctypes.c_void_p),
                ("offset", ctypes.c_float), ("rows", ctypes.c_int64), ("cols", ctypes.c_int64)]


# The prototypes of csrc/kernels.h, which tests/engine/test_native_kernels.py parses and checks these against.
_pointer, _size, _float, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
SIGNATURES = {
    "nf4_linear": [ctypes.POINTER(NF4Weight), _size, _pointer, _pointer, _size, _pointer, _pointer, _int],
    "nf4_prompt_linear": [ctypes.POINTER(NF4Weight), _size, _pointer, _pointer, _pointer, _size, _pointer, _pointer,
                          _pointer, _int, _int, _int],
    "nf4_prompt_has_vnni": [],
    "nf4_dequantize": [ctypes.POINTER(NF4Weight), _pointer, _pointer, _int],
    "nf4_encode": [_pointer, _size, _pointer, _pointer, _pointer, _int],
    "add_rms_norm": [_pointer, _pointer, _pointer, _float, _pointer, _size],
    "silu_mul_row": [_pointer, _pointer, _size],
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
        try:
            target = Path(cache_dir) / "kernels" / f"kbchat-{_build_key(compiler)}.so"
            if not target.is_file() and not _compile(compiler, target):
                return None
            library = _load(target)
            if library is None:  # a cached library that does not load: build it afresh once
                target.unlink(missing_ok=True)
                library = _load(target, fresh=True) if _compile(compiler, target) else None
        except OSError as error:  # e.g. an unwritable cache folder
            log.warning("C kernels: %s; torch's and bitsandbytes' own (slower) paths are used", error)
            return None
        if library is None:
            log.warning("C kernels: %s cannot be loaded; torch's and bitsandbytes' own (slower) paths are used", target)
            return None
        _library = library
        return library


def _flags() -> list[str]:
    return ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


def _build_key(compiler: str) -> str:
    """Sources, headers, the compiler's path and version, and the flags: a change in any of them is a new library."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    parts = [s.read_bytes() for s in SOURCES + HEADERS] + [compiler.encode(), version.encode(), " ".join(_flags()).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _digest_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _load(target: Path, *, fresh: bool = False) -> ctypes.CDLL | None:
    """The library with every function's signature set, or None (logged) if it is not the file we built,
    cannot be loaded or lacks a function. The digest is checked first: loading a library cut short can kill
    the process with SIGBUS, which no exception handler sees. ``fresh``: load it under a new name, because
    the dynamic loader hands back a library it already opened from the same path (the broken one)."""
    try:
        expected = _digest_file(target).read_text(encoding="ascii").strip()
        if file_sha256(target) != expected:
            log.warning("C kernels: %s is not the library that was built (changed or cut short)", target)
            return None
        if fresh:
            alias = target.with_name(f".{target.stem}-{os.getpid()}-{threading.get_ident()}.so")
            os.link(target, alias)
            try:
                library = ctypes.CDLL(str(alias))
            finally:
                alias.unlink()
        else:
            library = ctypes.CDLL(str(target))
        for name, arguments in SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes, function.restype = arguments, RETURNS.get(name)
    except (OSError, AttributeError) as error:
        log.warning("C kernels: loading %s failed: %s", target, error)
        return None
    return library


def _compile(compiler: str, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [compiler, *_flags(), *map(str, SOURCES), "-o", partial, "-lm"]
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
    _install(Path(partial), target)
    return True


def _install(built: Path, target: Path) -> None:
    """Move a fresh build into place, its digest beside it. Another process building the same library at once
    is harmless: at worst the digest and the library disagree and the next load builds again."""
    digest = file_sha256(built)
    partial = _digest_file(built)
    partial.write_text(digest + "\n", encoding="ascii")
    os.replace(partial, _digest_file(target))
    os.replace(built, target)
