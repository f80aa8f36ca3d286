"""`featurestore`: inspect, list and verify feature stores."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from . import catalog
from . import layout as L
from .reader import FeatureStore
from .storage import local_path, open_store, read_manifest, size_on_disk
from .verify import count_objects, verify
from .writer import StoreError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect, list and verify feature stores (Zarr v3 groups of a frozen LLM's hidden states).

    A store is written once by `extract`; `train_side` reads it. STORE is a path or an fsspec URL
    (file://, http(s)://, s3://, gs:// with s3fs/gcsfs installed).
    """


def _open(location: str) -> FeatureStore:
    try:
        return FeatureStore.open(location, allow_incomplete=True)
    except StoreError as e:
        raise click.ClickException(str(e)) from None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _describe(value) -> str:
    """A one-line summary of a source entry (model, dataset, ...) whatever its schema."""
    if not isinstance(value, dict):
        return str(value)
    head = value.get("id") or value.get("name") or value.get("dataset") or value.get("path") or ""
    extras = [f"{k}={value[k]}" for k in ("split", "quantization", "dtype", "n_examples") if k in value]
    return " ".join([str(head), *extras]).strip()


def _progress(store: FeatureStore) -> str:
    if store.complete:
        return "yes"
    raw = open_store(store.location)
    done = sum(read_manifest(raw, L.shard_manifest(j)) is not None for j in range(store.geometry.n_shards))
    return f"no ({done}/{store.geometry.n_shards} shards written)"


@main.command()
@click.argument("store")
def info(store: str) -> None:
    """Describe STORE: model, dataset, layers, codec, tokens, size on disk, bytes/token, complete."""
    fs = _open(store)
    a = fs.attrs
    size = size_on_disk(store)
    part_size = lambda part: size_on_disk(f"{store.rstrip('/')}/{part}")
    per_token = part_size("layers") + part_size("tokens")
    layers = list(fs.layers)
    rows = [
        ("store", store),
        ("fingerprint", fs.fingerprint),
        ("complete", _progress(fs)),
        ("model", _describe(a.get("model", "?"))),
        ("dataset", _describe(a.get("dataset", "?"))),
        ("template", _describe(a.get("template", "?"))),
        ("max length", a.get("max_length", "?")),
        ("layers", f"{len(layers)}: {_ranges(layers)}"),
        ("hidden size", fs.hidden_size),
        ("codec", repr(fs.codec)),
        ("examples", f"{fs.n_examples:,}"),
        ("tokens", f"{fs.n_tokens:,} ({int(fs.lengths.mean()) if fs.n_examples else 0} per example)"),
        ("size on disk", f"{_human(size)} (of which the frozen head {_human(part_size('head'))})"),
        ("bytes/token", f"{per_token / fs.n_tokens:,.0f} ({per_token / fs.n_tokens / len(layers):,.0f} per layer)"),
        ("created", f"{a.get('created', '?')} by ladder-cache {a.get('tool_version', '?')}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3, 8'."""
    out, start = [], None
    for i, k in enumerate(layers):
        if start is None:
            start = k
        if i + 1 == len(layers) or layers[i + 1] != k + 1:
            out.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(out)


@main.command("ls")
@click.argument("root", default=".")
def ls(root: str) -> None:
    """List the feature stores directly under ROOT as a table."""
    path = local_path(root)
    if path is None:
        import fsspec

        fs, base = fsspec.core.url_to_fs(root)
        candidates = [f"{root.rstrip('/')}/{Path(p).name}" for p in fs.ls(base, detail=False)]
    elif not path.is_dir():
        raise click.ClickException(f"{root} is not a directory")
    else:
        candidates = [str(p) for p, _ in catalog.stores_in(path)]
    rows = []
    for location in candidates:
        try:
            s = FeatureStore.open(location, allow_incomplete=True)
        except StoreError:
            continue
        a = s.attrs
        rows.append((Path(location).name, _describe(a.get("model", "?")), _describe(a.get("dataset", "?")),
                     f"{s.n_examples:,}", f"{s.n_tokens:,}", str(len(s.layers)), s.codec.name,
                     _human(size_on_disk(location)), "yes" if s.complete else "NO", s.fingerprint[:12]))
    if not rows:
        click.echo(f"no feature stores in {root}")
        return
    header = ("store", "model", "dataset", "examples", "tokens", "layers", "codec", "size", "complete", "fingerprint")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@main.command("verify")
@click.argument("store")
def verify_cmd(store: str) -> None:
    """Re-check every object of STORE against the checksums recorded when it was written.

    Exits non-zero, naming each bad shard and object, if anything is missing or corrupt."""
    fs = _open(store)
    with tqdm(total=count_objects(store), unit="obj", desc="verify", leave=False) as bar:
        problems = verify(store, progress=lambda n: bar.update(n - bar.n))
    if problems:
        for p in problems:
            click.echo(f"BAD  {p}", err=True)
        raise click.ClickException(f"{len(problems)} problem(s) in {store}")
    state = "complete" if fs.complete else "incomplete (every written shard is intact)"
    click.echo(f"ok: every checksum matches; store is {state}")
