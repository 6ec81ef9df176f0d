"""Where pgolf's own files are: the checkout it runs from, the embedded demo, and where runs go.

One place for these facts so the commands' defaults, the tests and the docs agree.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_DATASET = REPO / "data/demo/datasets/fineweb10B_demo1024"
DEMO_TOKENIZER = REPO / "data/demo/tokenizers/demo_1024_bpe.model"
TINY_EXAMPLE = REPO / "examples/tiny"


def default_run_folder(kind: str, name: str) -> Path:
    """runs/<time>_<kind><name> under the checkout: a new folder per command."""
    return REPO / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}_{kind}{name}"


def shown(path: Path) -> Path:
    """The path as the user opens it: inside a compose container (PGOLF_HOST_RUNS, the host folder
    mounted at /runs), the host's path, so that a printed `next:` hint works where it is read."""
    host = os.environ.get("PGOLF_HOST_RUNS")
    return Path(host) / path.relative_to("/runs") if host and path.is_relative_to("/runs") else path
