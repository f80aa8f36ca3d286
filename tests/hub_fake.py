"""A stand-in for huggingface_hub's client and its hf:// filesystem: no network.

``FakeHub`` records every call of the HfApi methods the project uses (create_repo, create_commit,
hf_hub_download, snapshot_download) and keeps each repository's files as the commits leave them;
a commit applies all of its files or none, as the Hub's do. ``FakeHfFileSystem`` serves those
files under hf:// through fsspec, as huggingface_hub's HfFileSystem does.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem
from huggingface_hub.errors import EntryNotFoundError


class HubDown(OSError):
    """What a failed upload looks like to the caller (a connection error)."""


class FakeHub:
    def __init__(self, root: Path, fail_at_commit: int | None = None):
        self.root = Path(root)
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        self.calls: list[tuple] = []
        self.commits: list[dict] = []  # {"repo", "message", "paths", "root_complete"}
        self.fail_at_commit = fail_at_commit

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kw):
        key = (repo_type or "model", repo_id)
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        if key in self.repos and not exist_ok:
            raise RuntimeError("repository exists")
        self.repos.setdefault(key, {".gitattributes": b"*.bin filter=lfs\n"})

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, revision=None, **kw):
        key = (repo_type or "model", repo_id)
        self.calls.append(("create_commit", repo_id, repo_type, commit_message))
        if key not in self.repos:
            raise RuntimeError(f"no repository {repo_id}")
        if self.fail_at_commit is not None and len(self.commits) == self.fail_at_commit:
            self.fail_at_commit = None
            raise HubDown("connection reset during the upload")
        files = {}
        for op in operations:
            with op.as_file() as f:
                files[op.path_in_repo] = f.read()
        self.repos[key].update(files)  # all or nothing
        self.materialize(*key)  # what hf:// serves from now on
        root = self.repos[key].get("zarr.json")
        self.commits.append({"repo": repo_id, "message": commit_message, "paths": list(files),
                             "root_complete": None if root is None else json.loads(root)["attributes"]["complete"]})

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, **kw):
        files = self.repos.get((repo_type or "model", repo_id), {})
        if filename not in files:
            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        return str(self.materialize(repo_type or "model", repo_id) / filename)

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, allow_patterns=None, **kw):
        self.calls.append(("snapshot_download", repo_id, repo_type, tuple(allow_patterns or ())))
        files = self.repos[(repo_type or "model", repo_id)]
        keep = [p for p in files if allow_patterns is None or any(fnmatch.fnmatch(p, a) for a in allow_patterns)]
        return str(self.materialize(repo_type or "model", repo_id, keep))

    def materialize(self, repo_type: str, repo_id: str, paths=None) -> Path:
        """The repository's files as a directory: ROOT/<type>s/ORG/NAME (as hf:// names it)."""
        directory = self.root / f"{repo_type}s" / repo_id
        for path, data in self.repos[(repo_type, repo_id)].items():
            if paths is None or path in paths:
                (directory / path).parent.mkdir(parents=True, exist_ok=True)
                (directory / path).write_bytes(data)
        return directory


class FakeHfFileSystem(LocalFileSystem):
    """hf://datasets/ORG/NAME[@REV]/key -> ROOT/datasets/ORG/NAME/key (set ``root`` first)."""

    protocol = ("hf",)
    root = "/nonexistent"
    cachable = False

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("hf://"):
            parts = path[len("hf://"):].split("/")
            parts[2] = parts[2].split("@")[0]
            path = "/".join([cls.root.rstrip("/"), *parts])
        return super()._strip_protocol(path)
