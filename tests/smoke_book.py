"""Every chapter executed once at the smoke profile, and the book built from those pages: the
smoke book that the browser check reads (tests/test_pages.py). `make test` makes it before
pytest and hands it over as $REPRO_SMOKE_BOOK, so that a test run executes each chapter at
smoke once; a chapter whose cell fails (its hidden checks included) fails this stage.

    python tests/smoke_book.py build/smoke-book
"""
import shutil
import sys
from pathlib import Path

from reprolib import book

from test_book import project_copy


def make(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return book.build(project_copy(root.resolve()), rerun=True, profile="smoke", progress=False)


if __name__ == "__main__":
    print(f"the smoke book is in {make(Path(sys.argv[1]))}")
