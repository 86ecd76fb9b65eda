"""What software a run used: the code's version, and the libraries' versions."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import version

from . import __version__
from .config import ROOT

LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "papermill", "jupyter-book")


def code_version() -> str:
    """The package version plus the git commit of a source checkout (with '+dirty' if edited).
    $REPRO_CODE_COMMIT, when set, wins: a copy sent to a GPU machine may carry no git metadata,
    or stale metadata. Staleness is judged by the files' hashes, not by this."""
    commit = os.environ.get("REPRO_CODE_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always",
                                     "--dirty=+dirty", "--abbrev=12", "--exclude=*"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{__version__}+{commit}" if commit else __version__


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except Exception:  # not installed: say so rather than fail the chapter
            found[name] = "not installed"
    return found
