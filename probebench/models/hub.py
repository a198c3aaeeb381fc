"""Where official weight files live: the torch hub cache under their official names, downloaded there when the
network and ``PROBEBENCH_OFFLINE`` allow; otherwise an error that says where to put the file."""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path

import torch

from probebench.errors import NotOnThisMachine


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's own rule for where hub downloads live)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def downloads_allowed() -> bool:
    """Downloads are tried unless ``PROBEBENCH_OFFLINE=1``."""
    return os.environ.get("PROBEBENCH_OFFLINE", "") not in ("1", "true", "yes")


def hub_file(file: str, url: str, hash_prefix: str | None, allow_download: bool | None, missing: str,
              alternatives: str) -> Path:
    """An official file in the torch hub cache, downloaded there when allowed; otherwise an error that says where
    to put it (``missing`` starts the message, ``alternatives`` ends it)."""
    cached = hub_checkpoint_dir() / file
    if cached.is_file():
        return cached
    allow = downloads_allowed() if allow_download is None else allow_download
    if allow and _reachable(url):
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=hash_prefix, progress=True)
            return cached
        except Exception as exc:  # network failures, hash mismatch: said in the error below
            cached.unlink(missing_ok=True)
            reason = f"the download from {url} failed ({exc})"
    else:
        reason = "no network to download it" if allow else "downloads are off (PROBEBENCH_OFFLINE=1)"
    raise NotOnThisMachine(f"{missing}: {reason}.\nPut the official file {file} into {cached.parent}/ (from {url}),\n"
                          f"{alternatives}")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_repo_file(repo: str, names) -> Path | None:
    """The first of ``names`` of Hugging Face hub repo ``repo`` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for fname in names:
        found = try_to_load_from_cache(repo, fname)
        if isinstance(found, str):
            return Path(found)
    return None


def download_repo_file(repo: str, names) -> tuple[Path | None, str]:
    """The first of ``names`` that downloads from hub repo ``repo`` (a repo holds one of them), or None and why each
    failed (for the error message)."""
    from huggingface_hub import hf_hub_download

    failed = ""
    for fname in names:
        try:
            return Path(hf_hub_download(repo, fname)), ""
        except Exception as exc:  # the repo may hold another of the names: said in the caller's error if none
            failed += f"; {fname}: {type(exc).__name__}"
    return None, failed
