"""One version everywhere: the CLI, the module attribute and the installed package metadata.

scripts/check_wheel.sh checks the same on an installed wheel; this catches the development
install drifting from _version.py (the metadata is only rewritten by a reinstall).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import modelfetch

VERSION_FILE = Path(modelfetch.__file__).with_name("_version.py")


def _cli_version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    match = re.fullmatch(r"modelfetch, version (\S+)\n", done.stdout)
    assert match, done.stdout
    return match.group(1)


def test_cli_module_and_metadata_agree() -> None:
    written = re.search(r'^__version__ = "([^"]+)"$', VERSION_FILE.read_text(), re.MULTILINE)
    assert written, f"no __version__ in {VERSION_FILE}"
    scripts = Path(sys.executable).parent
    found = {
        "_version.py": written.group(1),
        "modelfetch.__version__": modelfetch.__version__,
        "importlib.metadata": importlib.metadata.version("modelfetch"),
        "python -m modelfetch --version": _cli_version(
            [sys.executable, "-m", "modelfetch", "--version"]
        ),
        "modelfetch --version": _cli_version([str(scripts / "modelfetch"), "--version"]),
    }
    assert len(set(found.values())) == 1, found
