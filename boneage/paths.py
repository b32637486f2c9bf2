"""Where things live: the one source of truth for the project's paths.

Shipped data (reference tables, model weights, the example case) lives in the repository's
``data/`` folder. Research-only RSNA images are never copied into the repository; they are read
from ``../shared/data`` beside the checkout, or from ``$BONEAGE_SHARED_DATA`` when set.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = REPO_DIR / "data"
REFERENCES_DIR = DATA_DIR / "references"
MODELS_DIR = DATA_DIR / "models"
EXAMPLES_DIR = DATA_DIR / "examples"
DOCS_DIR = REPO_DIR / "docs"


def shared_data_dir() -> Path:
    """The shared data folder (``$BONEAGE_SHARED_DATA`` or ``../shared/data`` beside the repo).

    Returns:
        The path, which may not exist on a user's machine; callers check and skip or explain.
    """
    env = os.environ.get("BONEAGE_SHARED_DATA")
    return Path(env) if env else REPO_DIR.parent / "shared" / "data"


def rsna_dev_dir() -> Path:
    """Folder of the 1,180 full-aspect RSNA development radiographs (research-only)."""
    return shared_data_dir() / "rsna-dev"


def rsna_299_dir() -> Path:
    """Folder of the 11,232 RSNA radiographs squashed to 299 x 299 (research-only)."""
    return shared_data_dir() / "rsna-299"


def cache_dir() -> Path:
    """A writable cache outside the repository (``$BONEAGE_CACHE`` or ``~/.cache/boneage``).

    Decoded training arrays go here, never into the repo (they are derived from research-only
    images).
    """
    env = os.environ.get("BONEAGE_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "boneage"
    path.mkdir(parents=True, exist_ok=True)
    return path
