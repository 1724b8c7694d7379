"""Where bfn keeps what it can rebuild: the one place that names its cache folders.

bfn's own cache (the finished repeats of an interrupted evaluation, the feature classifiers of
``bfn eval --samples``) is ``BFN_CACHE_DIR`` when that is set, else the platform's cache folder for
bfn as platformdirs finds it: ``$XDG_CACHE_HOME/bfn`` or ``~/.cache/bfn`` on Linux,
``~/Library/Caches/bfn`` on macOS, ``%LOCALAPPDATA%\\bfn\\Cache`` on Windows.

Downloads from the Hugging Face Hub stay in huggingface_hub's own cache (``HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``), which its own tools (``hf cache ls``)
know; :func:`hub_cache_dir` names it.

A variable set to nothing (``BFN_CACHE_DIR=``, as a shell script that clears one leaves it) means
"not set", never a folder relative to wherever bfn was started; for the Hub's variables
:func:`ignore_empty_variables` makes huggingface_hub read it so too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

# The variables that name cache folders, bfn's own and those huggingface_hub reads.
CACHE_VARIABLES = ("BFN_CACHE_DIR", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")


def folder_from(name: str) -> Optional[Path]:
    """The folder an environment variable names; None when it is unset or set to nothing."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def bfn_cache_dir() -> Path:
    """bfn's own cache folder (see the module docstring)."""
    import platformdirs

    return folder_from("BFN_CACHE_DIR") or platformdirs.user_cache_path("bfn", appauthor=False)


def ignore_empty_variables() -> None:
    """Drop cache variables set to nothing from this process's environment, before huggingface_hub
    is imported: it would take an empty HF_HOME for the current folder."""
    for name in CACHE_VARIABLES:
        if name in os.environ and not os.environ[name].strip():
            del os.environ[name]


def hub_cache_dir() -> Path:
    """huggingface_hub's download cache, as it resolves it."""
    ignore_empty_variables()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)
