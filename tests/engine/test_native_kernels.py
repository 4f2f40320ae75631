"""engine.native: a cached kernel library that cannot be loaded falls back (rebuilt once, else torch's and
bitsandbytes' paths), and the build key changes with the compiler's version and the flags. Here rather than in
tests/llm, which another change owns at the moment."""

from __future__ import annotations

import ctypes
import logging
import re
import shutil
import stat
from pathlib import Path

import pytest

from engine import native

COMPILER = shutil.which("cc") or shutil.which("gcc")
needs_kernels = pytest.mark.skipif(not (native.cpu_supports_native() and COMPILER),
                                   reason="the kernels need AVX2/FMA and a C compiler")


def fake_compiler(folder: Path, version: str) -> str:
    path = folder / f"cc-{version}"
    path.write_text(f"#!/bin/sh\necho 'cc {version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_build_key_covers_the_compiler_version_and_the_flags(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    older, newer = fake_compiler(folder, "12.2"), fake_compiler(folder, "13.1")
    (folder / "cc-13.1").rename(folder / "cc")
    first = native._build_key(str(folder / "cc"))
    (folder / "cc").write_text("#!/bin/sh\necho 'cc 13.2'\n")  # the same path, upgraded in place
    assert native._build_key(str(folder / "cc")) != first
    assert native._build_key(older) != native._build_key(newer)
    before = native._build_key(older)
    monkeypatch.setattr(native, "_flags", lambda: ["-O2", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"])
    assert native._build_key(older) != before


def install(built: Path, target: Path) -> bool:
    """What a successful build does, from a copy of the one real build."""
    target.parent.mkdir(parents=True, exist_ok=True)
    copy = target.with_name(target.name + ".copy")
    shutil.copy(built, copy)
    native._install(copy, target)
    return True


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real build of the kernels, copied where a test needs a fresh one (a build takes a while)."""
    folder = tmp_path_factory.mktemp("built")
    target = folder / "kbchat.so"
    assert native._compile(COMPILER, target)
    return target


@needs_kernels
@pytest.mark.parametrize("broken", ["cut short", "missing symbols"])
def test_a_cached_library_that_does_not_load_is_rebuilt(tmp_path, monkeypatch, caplog, built, broken):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", COMPILER)
    target = tmp_path / "kernels" / f"kbchat-{native._build_key(COMPILER)}.so"
    target.parent.mkdir()
    if broken == "cut short":  # after a good build: loading it as it is can die of SIGBUS
        install(built, target)
        target.write_bytes(built.read_bytes()[:4096])
        words = "not the library that was built"
    else:  # a valid library of something else, with a digest that matches it
        source = tmp_path / "other.c"
        source.write_text("int other(void) { return 1; }\n")
        other = tmp_path / "other.so"
        assert native.subprocess.run([COMPILER, "-shared", "-fPIC", str(source), "-o", str(other)]).returncode == 0
        native._install(other, target)
        words = "undefined symbol: nf4_linear"
    builds = []
    monkeypatch.setattr(native, "_compile", lambda compiler, path: builds.append(path) or install(built, path))
    with caplog.at_level(logging.WARNING, logger="engine.native"):
        library = native.load_native(tmp_path)
    assert library is not None and hasattr(library, "nf4_linear") and builds == [target]
    assert words in caplog.text


@needs_kernels
def test_a_library_that_never_loads_falls_back_to_none(tmp_path, monkeypatch, caplog, built):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", COMPILER)
    monkeypatch.setattr(native, "_compile", lambda compiler, path: install(built, path))

    def noexec(path, *args, **kwargs):  # what a cache folder on a noexec mount gives
        raise OSError(f"{path}: failed to map segment from shared object")

    monkeypatch.setattr(native.ctypes, "CDLL", noexec)
    with caplog.at_level(logging.WARNING, logger="engine.native"):
        assert native.load_native(tmp_path) is None
    assert "cannot be loaded" in caplog.text and "failed to map segment" in caplog.text


CSRC = Path(native.__file__).parent / "csrc"
HEADER = CSRC / "kernels.h"


def c_declarations(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (return type, parameter types) of every non-static function declared or defined in C ``text``,
    types with their names and white space taken out (``const float *x`` -> ``const float*``)."""
    text = re.sub(r"/\*.*?\*/|#[^\n]*", "", text, flags=re.S)
    found = {}
    for match in re.finditer(r"^(?!static\b)([A-Za-z_][\w \t]*?[\s*]+)(\w+)\s*\(([^)]*)\)\s*[;{]", text, re.M):
        returns, name, parameters = match.groups()
        types = [] if parameters.strip() in ("", "void") else [
            re.sub(r"\s*\*\s*", "*", re.sub(r"\w+$", "", p.strip())).strip() for p in parameters.split(",")]
        found[name] = (returns.strip(), types)
    return found


def as_ctypes(c_type: str):
    if c_type.endswith("*"):
        return ctypes.POINTER(native.NF4Weight) if c_type.endswith("nf4_weight*") else ctypes.c_void_p
    return {"int64_t": ctypes.c_int64, "float": ctypes.c_float, "int": ctypes.c_int, "void": None}[c_type]


def test_the_ctypes_declarations_are_the_prototypes_of_the_header():
    """kernels.h declares each exported function once; native.SIGNATURES / RETURNS must say the same to
    ctypes, which would otherwise pass wrong-sized arguments without a word."""
    declared = c_declarations(HEADER.read_text())
    assert declared, "no prototypes parsed from kernels.h"
    assert set(native.SIGNATURES) == set(declared)
    for name, (returns, parameters) in declared.items():
        assert native.SIGNATURES[name] == [as_ctypes(p) for p in parameters], name
        assert native.RETURNS.get(name) == as_ctypes(returns), name


def test_every_c_file_defines_only_what_the_header_declares():
    """Both sources include the header (so the compiler holds each definition to its prototype), and export
    nothing the header leaves out."""
    declared = c_declarations(HEADER.read_text())
    for source in native.SOURCES:
        text = source.read_text()
        assert '#include "kernels.h"' in text, source.name
        defined = c_declarations(text)
        assert set(defined) <= set(declared), (source.name, set(defined) - set(declared))
    assert HEADER in native.HEADERS  # so a change to it builds a new library


def test_the_weight_structure_is_the_headers():
    body = re.search(r"typedef struct \{(.*?)\} nf4_weight;", re.sub(r"/\*.*?\*/", "", HEADER.read_text()), re.S)
    fields = []
    for declaration in filter(str.strip, body.group(1).split(";")):
        c_type, names = re.match(r"\s*((?:const\s+)?\w+)\s*(.*)", declaration, re.S).groups()
        for name in names.split(","):
            pointer = name.strip().startswith("*")
            fields.append((name.strip().lstrip("*").strip(), as_ctypes(c_type + ("*" if pointer else ""))))
    assert native.NF4Weight._fields_ == fields
