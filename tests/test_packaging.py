"""The wheel carries what the package needs at run time: the kernels' C sources and the header they include."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_kernel_sources_and_header(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("kbchat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"engine/csrc/nf4_kernel.c", "engine/csrc/decode_ops.c", "engine/csrc/nf4_prompt_tile.h"} <= names
