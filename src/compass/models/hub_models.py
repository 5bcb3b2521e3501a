"""Models named by hub id (`--model Qwen/Qwen3-VL-8B-Instruct`, optionally `@revision`), resolved to a snapshot
directory of the local hub cache, so that every stage reads a plain local directory and the run's input hashes
are the snapshot's file hashes.

Online, the snapshot is downloaded (huggingface_hub.snapshot_download, safetensors and the small files only);
offline (HF_HUB_OFFLINE=1), the cache must already hold it, else one line says so. The snapshot path itself says
which repo and commit it is (`models--Qwen--Qwen3-VL-8B-Instruct/snapshots/<commit>`): `hub_origin` reads it back
for the manifest.
"""
from __future__ import annotations

import re
from pathlib import Path

from compass.errors import CompassError
from compass.hub import HubRef, hub_cache_dir, offline, resolve_revision

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(?:@[A-Za-z0-9_./-]+)?$")
_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})$")
# what a model directory needs; optimizer states, .bin/.pth duplicates and GGUF exports are not fetched
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


def looks_like_repo_id(value: str) -> bool:
    return _REPO_ID.fullmatch(value) is not None


def parse(value: str) -> HubRef:
    repo_id, _, revision = value.partition("@")
    return HubRef("model", repo_id, revision or None)


def snapshot_dir(value: str) -> Path:
    """The local snapshot directory of hub model `value` ("owner/name" or "owner/name@revision")."""
    ref = parse(value)
    commit = resolve_revision(ref)  # offline: from the cache's refs, or one clear error
    folder = hub_cache_dir() / f"models--{ref.repo_id.replace('/', '--')}" / "snapshots" / commit
    if offline():
        if not (folder / "config.json").is_file():
            raise CompassError(f"model {ref.repo_id!r} at {commit[:12]} is in the hub cache without its config.json "
                               f"({folder}); download it again with the hub reachable")
        return folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref.repo_id, revision=commit, allow_patterns=ALLOW_PATTERNS))


def hub_origin(path: Path) -> str | None:
    """"owner/name@commit" when `path` is a hub cache snapshot, else None."""
    found = _SNAPSHOT.search(Path(path).as_posix())
    return f"{found['owner']}/{found['name']}@{found['commit']}" if found else None
