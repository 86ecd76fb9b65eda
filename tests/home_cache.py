"""Whether `make test` left the user's cache alone: `before` lists ~/.cache/repro (every path,
size and modification time) into a file; `after` lists it again and fails, naming what changed,
if the two differ.

    python tests/home_cache.py before build/test-cache/home.txt
    ...every stage of make test, on its own cache...
    python tests/home_cache.py after build/test-cache/home.txt
"""
import os
import sys
from pathlib import Path


def listing(home: Path) -> list[str]:
    root = home / ".cache" / "repro"
    if not root.exists():
        return []
    return sorted(f"{p.relative_to(root)} {p.stat().st_size} {p.stat().st_mtime_ns}"
                  for p in root.rglob("*"))


def main(verb: str, record: Path, home: Path = Path.home()) -> int:
    now = listing(home)
    if verb == "before":
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text("\n".join(now))
        return 0
    before = record.read_text().splitlines() if record.read_text() else []
    changed = sorted(set(now) ^ set(before))
    if changed:
        print(f"make test changed {home / '.cache' / 'repro'}: {len(changed)} entries, the first "
              f"{changed[:5]}", file=sys.stderr)
        return 1
    print(f"{home / '.cache' / 'repro'} untouched ({len(now)} entries before and after)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), Path(os.environ.get("HOME", Path.home()))))
