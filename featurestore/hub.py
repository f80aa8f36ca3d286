"""Feature stores on the Hugging Face Hub: ``hf://datasets/ORG/NAME`` as a push destination.

Reading needs nothing of ours: ``hf://`` is an fsspec protocol (``huggingface_hub.HfFileSystem``),
so every command that reads a store reads one on the Hub through the same read cache as any URL.

Writing does: the Hub stores files in git commits, and a copy object by object through fsspec
would be one commit per object. A push is a few commits made with ``huggingface_hub``'s own
client (which uploads, deduplicates and retries; nothing here speaks HTTP), in the order that
keeps a half-finished upload from looking complete, as ``featurestore push`` does elsewhere:

1. the root ``zarr.json`` marked ``complete: false`` (a reader refuses the store from now on);
2. the metadata and every chunk or shard object, checked against the sha256 its manifest records,
   in commits of at most ``MAX_FILES`` files / ``MAX_BYTES`` bytes;
3. one last commit: the manifests, a dataset card (README.md) and the root as the source has it.

Re-running resumes: the Hub keeps what earlier commits stored and ``huggingface_hub`` skips
uploading large files the Hub already holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import inventory
from .errors import UserError
from .storage import digest, open_store, read_bytes
from .writer import MARKER

MAX_FILES = 1000  # files per commit: well under the Hub's limits, and a failed commit loses little
MAX_BYTES = 1 << 30  # bytes held in memory for one commit
_URL = re.compile(r"hf://(?:(?P<type>models|datasets|spaces)/)?(?P<id>[\w.-]+/[\w.-]+?)(?:@(?P<rev>[^/]+))?/?$")


class HubError(UserError, RuntimeError):
    """An ``hf://`` location that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class HubRepo:
    """A Hub repository named by an ``hf://`` URL: ``hf://[datasets/]ORG/NAME[@REVISION]``."""

    repo_type: str  # "model" or "dataset"
    repo_id: str  # ORG/NAME
    revision: str | None = None

    @property
    def url(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"hf://{kind}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def is_hf_url(location) -> bool:
    return str(location).startswith("hf://")


def parse_hf_url(url: str, repo_type: str) -> HubRepo:
    """The repository of ``url``, which must be of ``repo_type`` (a store is a dataset repo, a run a
    model repo); a one-line HubError otherwise."""
    match = _URL.match(str(url))
    if match is None:
        raise HubError(f"{url} is not a Hub repository URL; use hf://ORG/NAME for a run, hf://datasets/ORG/NAME "
                       "for a store (optionally @REVISION)")
    found = (match["type"] or "models")[:-1]
    if found != repo_type:
        want = "hf://datasets/ORG/NAME" if repo_type == "dataset" else "hf://ORG/NAME"
        what = "a feature store goes to a dataset repository" if repo_type == "dataset" else \
            "a side network goes to a model repository"
        raise HubError(f"{url} is a {found} repository; {what}: {want}")
    return HubRepo(found, match["id"], match["rev"])


def huggingface_hub():
    """The huggingface_hub module, which the base install leaves out (the ``[hub]`` extra)."""
    try:
        import huggingface_hub
    except ImportError:
        raise HubError("the Hugging Face Hub needs huggingface_hub: pip install 'ladder-cache[hub]'") from None
    return huggingface_hub


def hub_api():
    """huggingface_hub's client (token from ``hf auth login`` or $HF_TOKEN)."""
    return huggingface_hub().HfApi()


@dataclass
class Pushed:
    url: str
    files: int  # files committed (the Hub skips uploading large ones it already holds)
    commits: int
    already: bool  # the repository already held this complete store; nothing was committed


def push_store(source, url: str, *, api=None, private: bool | None = None,
               progress: Callable[[int, int], None] | None = None) -> Pushed:
    """Pushes the complete store at ``source`` (a path or URL) to the dataset repository of ``url``
    through ``api`` (an ``HfApi``; a stand-in in tests). Every object is checked against its
    manifest's sha256 before it is committed; ``complete`` is committed last. ``progress(done,
    total)`` counts objects."""
    CommitOperationAdd = huggingface_hub().CommitOperationAdd

    repo = parse_hf_url(url, "dataset")
    api = api or hub_api()
    src = open_store(source, cache_dir="off")
    root = read_bytes(src, "zarr.json")
    attrs = _root_attrs(root)
    if attrs.get("format") != MARKER:
        raise HubError(f"no feature store at {source}")
    if not attrs.get("complete"):
        raise HubError(f"{source} is incomplete; only a complete store is pushed to the Hub (finish it with "
                       "extract --resume)")
    found = inventory.sections(src, attrs)
    if unfinished := [s for s in found if s.checksums is None]:
        raise HubError(f"{source} claims to be complete but its {unfinished[0].manifest} is missing or torn; "
                       "run featurestore verify")
    where = dict(repo_id=repo.repo_id, repo_type="dataset")
    api.create_repo(**where, private=private, exist_ok=True)
    theirs = _remote_root(api, repo)
    if theirs is not None and theirs.get("fingerprint") != attrs["fingerprint"]:
        raise HubError(f"{url} holds another store (fingerprint {str(theirs.get('fingerprint'))[:12]}); "
                       "push to a new repository")
    if theirs is not None and theirs.get("complete"):
        return Pushed(repo.url, 0, 0, True)

    commit = lambda operations, message: api.create_commit(**where, operations=operations, commit_message=message,
                                                           revision=repo.revision)
    commit([CommitOperationAdd("zarr.json", _marked_incomplete(root))], "feature store: upload started (incomplete)")
    plan = [(key, None) for key in inventory.metadata_keys(attrs, found)]
    plan += [(key, sha) for s in found for key, sha in sorted(s.checksums.items())]
    commits, batch, size = 1, [], 0
    for done, (key, expected) in enumerate(plan, start=1):
        data = read_bytes(src, key)
        if data is None or (expected is not None and digest(data) != expected):
            problem = "missing" if data is None else "checksum mismatch"
            raise HubError(f"{key} of {source}: {problem}; nothing more pushed, {url} stays incomplete (run "
                           "featurestore verify on the source)")
        batch.append(CommitOperationAdd(key, data))
        size += len(data)
        if len(batch) >= MAX_FILES or size >= MAX_BYTES:
            commit(batch, f"feature store: objects up to {key}")
            commits, batch, size = commits + 1, [], 0
        if progress:
            progress(done, len(plan))
    if batch:
        commit(batch, "feature store: objects")
        commits += 1
    last = [CommitOperationAdd(s.key, s.raw) for s in found]
    last += [CommitOperationAdd("README.md", dataset_card(attrs, repo).encode()), CommitOperationAdd("zarr.json", root)]
    commit(last, f"feature store {attrs['fingerprint'][:12]}: complete")
    return Pushed(repo.url, len(plan) + len(last) + 1, commits + 1, False)


def dataset_card(attrs: dict, repo: HubRepo) -> str:
    """README.md of a store's dataset repository: what computed it and how to train from it."""
    model, data = attrs.get("model", {}), attrs.get("dataset", {})
    codec = attrs.get("codec", {})
    front = ["---", "tags:", "- ladder-cache", "- feature-store", "- hidden-states", "---", ""]
    lines = [
        f"# Hidden states of {model.get('id', '?')} on {data.get('dataset', '?')} ({data.get('split', '?')})", "",
        "A ladder-cache feature store: the frozen backbone's hidden states, extracted once "
        "(Zarr v3, one array per hidden state), to train Ladder / xLadder side networks without the backbone.", "",
        "| | |", "|---|---|",
        f"| backbone | {model.get('id', '?')} ({model.get('architecture', '?')}, {model.get('dtype', '?')}, "
        f"quantization {model.get('quantization', '?')}) |",
        f"| weights sha256 | `{model.get('weights_hash', '?')}` |",
        f"| store fingerprint | `{attrs.get('fingerprint', '?')}` |",
        f"| dataset | {data.get('dataset', '?')}, split {data.get('split', '?')}, "
        f"{data.get('n_examples', '?')} examples |",
        f"| hidden states | {len(attrs.get('layers', []))} ({', '.join(map(str, attrs.get('layers', [])))}) |",
        f"| codec | {codec.get('name', '?')} |",
        f"| tokens | {attrs.get('n_tokens', '?')} |", "",
        "```bash",
        f"featurestore info {repo.url}",
        f"train_side train {repo.url} --out runs/ladder",
        f"featurestore pull {repo.url} stores/",
        "```", "",
    ]
    return "\n".join(front + lines)


def _remote_root(api, repo: HubRepo) -> dict | None:
    """The attributes of the repository's root zarr.json, or None when it has none yet."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        path = api.hf_hub_download(repo.repo_id, "zarr.json", repo_type="dataset", revision=repo.revision)
    except (EntryNotFoundError, RevisionNotFoundError):
        return None
    return _root_attrs(Path(path).read_bytes())


def _root_attrs(root: bytes | None) -> dict:
    try:
        return json.loads(root)["attributes"] if root is not None else {}
    except (ValueError, KeyError, TypeError):
        return {}


def _marked_incomplete(root: bytes) -> bytes:
    node = json.loads(root)
    node["attributes"]["complete"] = False
    return json.dumps(node, indent=2).encode()
