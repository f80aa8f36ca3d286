"""`featurestore`: inspect, list, verify and copy feature stores."""

from __future__ import annotations

import os
from pathlib import Path

import click
from tqdm import tqdm

from . import catalog, inventory
from .inventory import human_bytes
from .reader import FeatureStore
from .remote import REMOTE_CACHE_ENV
from .errors import UserError
from .storage import local_path
from .hub import is_hf_url, push_store
from .transfer import copy_store
from .verify import verify
from .errors import CorruptStoreError, StoreError


class OneLineUserErrors:
    """The error boundary of a click command, and of every subcommand of a group: a
    :class:`UserError` is printed as ``Error: <the first line of its message>`` with exit status 1;
    anything else is a bug and keeps its traceback. Mixed in first: ``Command``, ``Group``."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise click.ClickException((str(e).splitlines() or [""])[0]) from None


class Command(OneLineUserErrors, click.Command):
    """A click command whose user errors are one line (``@click.command(cls=Command)``)."""


class Group(OneLineUserErrors, click.Group):
    """A click group whose commands' user errors are one line (``@click.group(cls=Group)``)."""


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect, list, verify and copy feature stores (Zarr v3 groups of a frozen LLM's hidden states).

    A store is written once by `extract`; `train_side` reads it. STORE is a path or an fsspec URL
    (file://, http(s)://, s3://, gs:// with s3fs/gcsfs installed); a URL is read through a local
    cache, so a second read is a local one. `push` and `pull` copy a store, checksums verified.
    """


def cache_option(command):
    """``--cache-dir``: the read cache for URLs, exported as $LADDER_REMOTE_CACHE so that every
    store the command opens, and its worker processes, use it."""

    def export(ctx, param, value):
        if value is not None:
            os.environ[REMOTE_CACHE_ENV] = value

    return click.option("--cache-dir", default=None, expose_value=False, callback=export, metavar="DIR",
                        help="Local read cache of stores given by URL; 'off' reads them uncached. "
                             f"[default: ${REMOTE_CACHE_ENV}, else $LADDER_CACHE_DIR/remote, else "
                             "~/.cache/ladder-cache/remote]")(command)


def _open(location: str) -> FeatureStore:
    return FeatureStore.open(location, allow_incomplete=True)


def _sizes(store: FeatureStore) -> tuple[dict[str, int], list[inventory.Section]]:
    """{object: bytes} of a store, found from its metadata (no listing), and its sections."""
    found = inventory.sections(store.group.store, store.attrs)
    return inventory.sizes(store.group.store, store.attrs, found), found


def _describe(value) -> str:
    """A one-line summary of a source entry (model, dataset, ...) whatever its schema."""
    if not isinstance(value, dict):
        return str(value)
    head = value.get("id") or value.get("name") or value.get("dataset") or value.get("path") or ""
    extras = [f"{k}={value[k]}" for k in ("split", "quantization", "dtype", "n_examples") if k in value]
    return " ".join([str(head), *extras]).strip()


def _progress(store: FeatureStore, found: list[inventory.Section]) -> str:
    if store.complete:
        return "yes"
    done = sum(section.raw is not None for section in found[1:])
    return f"no ({done}/{store.geometry.n_shards} shards written)"


@main.command()
@click.argument("store")
@cache_option
def info(store: str) -> None:
    """Describe STORE: model, dataset, layers, codec, tokens, size on disk (hidden states, frozen
    head, the rest), bytes/token, complete."""
    fs = _open(store)
    a = fs.attrs
    sizes, found = _sizes(fs)
    footprint = inventory.Footprint.of(sizes)
    layers = list(fs.layers)
    rows = [
        ("store", store),
        ("fingerprint", fs.fingerprint),
        ("complete", _progress(fs, found)),
        ("model", _describe(a.get("model", "?"))),
        ("dataset", _describe(a.get("dataset", "?"))),
        ("template", _describe(a.get("template", "?"))),
        ("max length", a.get("max_length", "?")),
        ("layers", f"{len(layers)}: {_ranges(layers)}"),
        ("hidden size", fs.hidden_size),
        ("codec", repr(fs.codec)),
        ("examples", f"{fs.n_examples:,}"),
        ("tokens", f"{fs.n_tokens:,} ({int(fs.lengths.mean()) if fs.n_examples else 0} per example)"),
        *([("top blocks", f"the backbone's top {a['top_blocks']}, for side networks of kind top")]
          if a.get("top_blocks") else []),
        ("size on disk", footprint.size()),
        ("bytes/token", footprint.per_token(fs.n_tokens, len(layers))),
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
@cache_option
def ls(root: str) -> None:
    """List the feature stores directly under ROOT (a directory or URL) as a table."""
    path = local_path(root)
    if path is None:
        candidates = _list_url(root)
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
                     human_bytes(sum(_sizes(s)[0].values())), "yes" if s.complete else "NO", s.fingerprint[:12]))
    if not rows:
        click.echo(f"no feature stores in {root}")
        return
    header = ("store", "model", "dataset", "examples", "tokens", "layers", "codec", "size", "complete", "fingerprint")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _list_url(root: str) -> list[str]:
    """The URLs directly under ``root``: an object store lists them; an HTTP server only if it
    serves directory pages."""
    import fsspec

    try:
        fs, base = fsspec.core.url_to_fs(root)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)]
    except (OSError, ImportError, ValueError, NotImplementedError) as e:
        raise click.ClickException(f"cannot list {root} ({str(e).splitlines()[0]}); a plain HTTP server may not list "
                                   "directories: give a store's URL to `featurestore info` instead") from None
    return [f"{root.rstrip('/')}/{name}" for name in names if name]


@main.command("verify")
@click.argument("store")
@cache_option
def verify_cmd(store: str) -> None:
    """Re-check every object of STORE against the checksums recorded when it was written.

    Exits non-zero, naming each bad shard and object, if anything is missing or corrupt."""
    try:
        fs = _open(store)
    except CorruptStoreError as e:  # refused on open: its root or a document does not match its digest
        click.echo(f"BAD  {getattr(e, 'problem', e)}", err=True)
        raise click.ClickException(f"1 problem in {store}: the store is damaged; extract or pull it again") from None
    with tqdm(unit="obj", desc="verify", leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        problems = verify(store, progress=progress)
    if problems:
        for p in problems:
            click.echo(f"BAD  {p}", err=True)
        cache = getattr(fs.group.store, "cache", None)
        note = f" (read through the cache {cache.root}: delete it to fetch again)" if cache is not None else ""
        raise click.ClickException(f"{len(problems)} problem(s) in {store}{note}")
    state = "complete" if fs.complete else "incomplete (every written shard is intact)"
    click.echo(f"ok: every checksum matches; store is {state}")


def _copy(source: str, dest: str, allow_incomplete: bool) -> None:
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="copy", leave=False) as bar:
        def progress(nbytes: int, total: int) -> None:
            bar.total = total
            bar.update(nbytes)

        try:
            done = copy_store(source, dest, allow_incomplete=allow_incomplete, progress=progress)
        except UserError:
            raise  # the boundary's, not one of the foreign errors below
        except (OSError, ImportError) as e:  # unreachable host, missing s3fs/gcsfs, unwritable destination
            raise click.ClickException(f"cannot copy {source} to {dest}: {str(e).splitlines()[0]}") from None
    if not done.copied and not done.present:
        click.echo(f"{dest} already holds this complete store")
        return
    state = "complete" if done.complete else "incomplete, like its source"
    click.echo(f"{done.copied} objects copied ({human_bytes(done.nbytes)}), {done.present} already there; "
               f"every checksum matches; {dest} is {state}")


@main.command()
@click.argument("store")
@click.argument("url")
@click.option("--allow-incomplete", is_flag=True, help="Copy the finished shards of an incomplete store.")
@click.option("--private", is_flag=True, help="hf:// only: create the repository private (if it does not exist).")
def push(store: str, url: str, allow_incomplete: bool, private: bool) -> None:
    """Copy STORE to URL (a path, file://, s3://, gs:// or hf://datasets/ORG/NAME), object by object.

    Every chunk and shard is checked against the checksum its manifest records; the copy is marked
    complete last, only when every object arrived intact. Re-run to resume an interrupted copy.

    To the Hugging Face Hub (log in first: `hf auth login` or $HF_TOKEN) a push is a few commits
    made by huggingface_hub: the root marked incomplete, the objects, then the manifests, a dataset
    card and the root marked complete, last. Anyone can then read hf://datasets/ORG/NAME wherever a
    store is accepted (`train_side train hf://datasets/ORG/NAME --out runs/a`)."""
    if is_hf_url(url):
        _push_to_hub(store, url, allow_incomplete, private)
        return
    _copy(store, url, allow_incomplete)


def _push_to_hub(store: str, url: str, allow_incomplete: bool, private: bool) -> None:
    if allow_incomplete:
        raise click.ClickException("only complete stores go to the Hub; drop --allow-incomplete")
    with tqdm(unit="obj", desc="push", leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            pushed = push_store(store, url, private=private or None, progress=progress)
        except UserError:
            raise  # the boundary's, not one of the foreign errors below
        except OSError as e:  # huggingface_hub's HTTP errors: unreachable, not logged in, no write access
            raise click.ClickException(f"cannot push to {url}: {str(e).splitlines()[0]}; check `hf auth login` "
                                       "and your access, then re-run to resume") from None
    if pushed.already:
        click.echo(f"{pushed.url} already holds this complete store")
    else:
        click.echo(f"{pushed.files} files pushed to {pushed.url} in {pushed.commits} commits; complete")


@main.command()
@click.argument("url")
@click.argument("dir", type=click.Path(file_okay=False))
@click.option("--allow-incomplete", is_flag=True, help="Copy the finished shards of an incomplete store.")
def pull(url: str, dir: str, allow_incomplete: bool) -> None:
    """Copy the store at URL (http(s)://, hf://datasets/ORG/NAME, s3://, gs://, file:// or a path) to
    DIR, object by object.

    An existing directory that is not a store receives the copy under the URL's last name (like
    cp). Every chunk and shard is checked against the checksum its manifest records; the copy is
    marked complete last, only when every object arrived intact. Re-run to resume."""
    path = Path(dir).expanduser()
    if path.is_dir() and not (path / "zarr.json").exists():
        path = path / url.rstrip("/").rsplit("/", 1)[-1]
    _copy(url, str(path), allow_incomplete)
