"""What software a run used: the code's version, the libraries' versions, and the code that
computes a result (`code_digest`), which a job's key covers."""
from __future__ import annotations

import ast
import hashlib
import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

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


PACKAGE = Path(__file__).resolve().parent


def _file_of(module: str, root: Path) -> Path | None:
    """The source file of `module` (dotted, from the package `root`'s name) under `root`."""
    parts = module.split(".")[1:]
    candidates = [root.joinpath(*parts).with_suffix(".py")] if parts else []
    candidates.append(root.joinpath(*parts, "__init__.py"))
    return next((c for c in candidates if c.is_file()), None)


def imports_of(path: Path, module: str, root: Path) -> set[str]:
    """The package's modules that the file `path` (module `module`) imports, anywhere in it
    (a function's own imports included), as dotted names; a name imported from a package that
    is a module of its own counts as that module."""
    package = root.name
    # where a relative import starts from: a package's __init__ stands inside the package
    here = module.split(".") + (["__init__"] if path.name == "__init__.py" else [])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bases = [a.name for a in node.names if a.name.split(".")[0] == package]
            names = [[] for _ in bases]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[:len(here) - node.level] + ([node.module] if node.module
                                                                 else []))
            elif (node.module or "").split(".")[0] == package:
                base = node.module
            else:
                continue
            bases, names = [base], [[a.name for a in node.names]]
        else:
            continue
        for base, subnames in zip(bases, names):
            found.add(base)
            found.update(f"{base}.{n}" for n in subnames
                         if _file_of(f"{base}.{n}", root) is not None)
    return {m for m in found if _file_of(m, root) is not None}


def closure(module: str, root: Path = PACKAGE) -> list[Path]:
    """The source files that importing `module` can execute: its own, its packages'
    `__init__`s and, transitively, every module of the package (`root`) they import (a static
    reading of the import statements, so a module imported only under some condition counts
    too). A module outside the package (a user's own step) counts with its own file."""
    package, seen, todo = root.name, {}, [module]
    if not module.startswith(package):
        path = Path(sys.modules[module].__file__).resolve()
        seen[module], todo = path, sorted(imports_of(path, module, root))
    while todo:
        name = todo.pop()
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for m in [name, *parents]:
            path = _file_of(m, root)
            if m in seen or path is None:
                continue
            seen[m] = path
            todo.extend(imports_of(path, m, root))
    return sorted(seen.values())


def code_digest(module: str, root: Path = PACKAGE) -> str:
    """A hash of the code `closure(module)` names (paths and contents): what a job whose step
    is defined in `module` computes with. A change to any of those files changes it; a change
    to a module outside the closure (a view) does not."""
    if root == PACKAGE:
        return _package_digest(module)
    return _digest(module, root)


def _digest(module: str, root: Path) -> str:
    h = hashlib.sha256()
    for path in closure(module, root):
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _package_digest(module: str) -> str:
    """The installed package's code does not change under a running process: hashed once."""
    return _digest(module, PACKAGE)
