"""bfn's cache folders: BFN_CACHE_DIR, then the platform's cache folder; empty variables ignored."""

import os
from pathlib import Path

import pytest

from bfncli import cache_dirs


def test_bfn_cache_dir_follows_bfn_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("BFN_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dirs.bfn_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("BFN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dirs.bfn_cache_dir() == tmp_path / "xdg" / "bfn"


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_variable_is_unset_not_the_current_folder(monkeypatch, tmp_path, empty):
    monkeypatch.setenv("BFN_CACHE_DIR", empty)
    monkeypatch.setenv("XDG_CACHE_HOME", empty)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dirs.bfn_cache_dir().is_absolute()
    assert cache_dirs.bfn_cache_dir() == tmp_path / ".cache" / "bfn"


def test_hub_variables_set_to_nothing_are_dropped_before_huggingface_hub_reads_them(monkeypatch, tmp_path):
    for name in ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("HOME", str(tmp_path))
    cache_dirs.ignore_empty_variables()
    assert not {"HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"} & set(os.environ)


def test_hub_cache_in_a_fresh_process_with_empty_hf_home(tmp_path):
    """huggingface_hub reads its variables once, on import: run it where nothing imported it yet."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": "", "HF_HUB_CACHE": "", "HOME": str(tmp_path)}
    env.pop("XDG_CACHE_HOME", None)
    out = subprocess.run([sys.executable, "-c", "from bfncli.cache_dirs import hub_cache_dir; print(hub_cache_dir())"],
                         env=env, capture_output=True, text=True, cwd=tmp_path, check=True).stdout.strip()
    assert Path(out) == tmp_path / ".cache" / "huggingface" / "hub"


def test_free_memory_is_the_machines_available_memory():
    import psutil
    import torch

    from bfncli.jobs.runtime import free_memory

    free = free_memory(torch.device("cpu"))
    assert 0 < free <= psutil.virtual_memory().total
