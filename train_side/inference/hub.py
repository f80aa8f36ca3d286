"""Trained runs on the Hugging Face Hub: ``train_side push RUN hf://ORG/NAME`` and reading
``hf://ORG/NAME[@REVISION]`` wherever a run directory is accepted.

What goes is what someone needs to use and judge the side network, as peft shares an adapter:
its weights and config, its metrics and plots, the metrics of its evaluations, and a generated
model card naming the backbone, the store fingerprint, the data and the measured metrics. Never the
optimizer state (``resume.pt``: twice the weights, useless to a user) or the run's lock files.

Everything goes in ONE commit, with ``side_config.json`` (what makes a directory a checkpoint)
last in it: a Hub commit is atomic, so an interrupted push leaves the repository as it was, never
holding weights without their config or a card describing other weights. The transfer itself is
``huggingface_hub``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from featurestore.hub import HubError, HubRepo, hub_api, is_hf_url, parse_hf_url

from ..checkpoint import CONFIG, WEIGHTS, Checkpoint

CARD = "README.md"
PATTERNS = (WEIGHTS, CONFIG, "metrics.jsonl", "*.png", "eval/metrics.json", "eval/predictions.jsonl",
            "eval-backbone/metrics.json", "eval-backbone/predictions.jsonl", CARD)  # what a push sends


def run_files(run: Path) -> list[str]:
    """The files of ``run`` that a push sends (but the card, which is generated), config last."""
    run = Path(run)
    if not (run / CONFIG).is_file() or not (run / WEIGHTS).is_file():
        raise HubError(f"{run} holds no trained side network ({WEIGHTS} and {CONFIG}); push a finished run")
    found = sorted({str(p.relative_to(run)) for pattern in PATTERNS[:-1] for p in run.glob(pattern) if p.is_file()})
    return [f for f in found if f != CONFIG] + [CONFIG]


@dataclass
class PushedRun:
    url: str
    files: list[str]  # in the order committed


def push_run(run: str | Path, url: str, *, api=None, private: bool | None = None) -> PushedRun:
    """Pushes the run directory ``run`` to the model repository of ``url`` through ``api`` (an
    ``HfApi``; a stand-in in tests) in one commit, with a generated model card."""
    from huggingface_hub import CommitOperationAdd

    repo = parse_hf_url(url, "model")
    run = Path(run)
    files = run_files(run)
    card = model_card(run, repo)
    api = api or hub_api()
    api.create_repo(repo.repo_id, repo_type="model", private=private, exist_ok=True)
    operations = [CommitOperationAdd(CARD, card.encode())]
    operations += [CommitOperationAdd(name, str(run / name)) for name in files]
    checkpoint = Checkpoint.load(run)
    api.create_commit(repo.repo_id, operations, repo_type="model", revision=repo.revision,
                      commit_message=f"{checkpoint.side.kind} side network for {_backbone(checkpoint)}")
    return PushedRun(repo.url, [CARD, *files])


def fetch_run(location: str | Path, *, download=None) -> Path:
    """A local directory holding the run at ``location``: itself when local, else (``hf://ORG/NAME``)
    its files from the Hub, through huggingface_hub's cache (``download``: its ``snapshot_download``
    or a stand-in)."""
    if not is_hf_url(location):
        if "://" in str(location):
            raise HubError(f"{location}: a run is read from a directory or hf://ORG/NAME; copy it locally first")
        return Path(location)
    repo = parse_hf_url(str(location), "model")
    if download is None:
        from huggingface_hub import snapshot_download as download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        path = Path(download(repo.repo_id, repo_type="model", revision=repo.revision, allow_patterns=list(PATTERNS)))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise HubError(f"{location} is not in the local Hugging Face cache and the Hub cannot be reached "
                       f"({str(e).splitlines()[0]}); connect, or set HF_HUB_OFFLINE=0") from None
    except HfHubHTTPError as e:
        raise HubError(f"{location}: the Hub says {str(e).splitlines()[0]}; check the name and your token "
                       "(hf auth login)") from None
    if not (path / CONFIG).is_file():
        raise HubError(f"{location} holds no side network ({CONFIG} is missing); push one with train_side push")
    return path


def model_card(run: Path, repo: HubRepo) -> str:
    """README.md for a pushed run: the backbone, the store fingerprint, the data, the side network
    and the metrics measured (validation loss; every evaluation's metrics.json), and how to use it."""
    c = Checkpoint.load(run)
    model, data = c.store.provenance.model, c.store.provenance.dataset
    evals = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(run).glob("eval*/metrics.json"))}
    base = model.id or "?"
    front = ["---", "library_name: ladder-cache", "tags:", "- ladder-side-tuning", f"- {c.side.kind}"]
    if "/" in base and not base.startswith("/"):  # a hub id, not a local path or a packaged alias
        front.append(f"base_model: {base}")
    front += ["---", ""]
    rows = [
        ("side network", f"{c.side.kind}, {c.n_parameters:,} parameters, width {c.side.width}, "
                         f"{c.side.n_blocks} blocks, reading hidden states {', '.join(map(str, c.side.inputs))}"),
        ("backbone", _backbone(c)),
        ("backbone weights sha256", f"`{model.weights_hash or '?'}`"),
        ("store fingerprint", f"`{c.store.fingerprint}` (codec {c.store.codec.get('name', '?')})"),
        ("data", f"{data.dataset or '?'}, split {data.split or '?'}, {data.n_examples or '?'} examples, "
                 f"template {c.store.provenance.template.name}"),
        ("training", f"{c.step} steps, {c.epochs:g} epochs, lr {c.optim.lr:g}, {c.train_seconds:.0f} s"),
        ("validation loss", "n/a" if c.val_loss is None else f"{c.val_loss:.4f}"),
    ]
    for name, m in evals.items():
        label = "evaluation" + (" (backbone alone)" if name == "eval-backbone" else "")
        rows.append((label, f"{m.get('dataset', '?')} {m.get('split', '?')}, {m.get('examples', '?')} examples, "
                            f"{m.get('decoding', '?')}: accuracy {m.get('accuracy', 0):.1%}, mean CoT "
                            f"{m.get('mean_cot_tokens', 0):.1f} tokens, {m.get('tokens_per_second', 0):.1f} tokens/s"))
    lines = [f"# {c.side.kind} side network for {base}", "",
             "A Ladder Side Tuning side network (ladder-cache): the backbone stays frozen and is loaded from its own "
             "source; this repository holds only the side network, as a peft adapter holds only the adapter.", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "## Use", "", "```bash", f'train_side generate {repo.url} "your question"', "```", "",
             "```python", "from train_side import SideModel", "",
             f'model = SideModel.from_pretrained("{repo.url}")   # reloads exactly the backbone above',
             'ids = model.tokenizer(model.format("your question"), return_tensors="pt").input_ids',
             "out = model.generate(ids, max_new_tokens=128)",
             "print(model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))", "```", ""]
    return "\n".join(front + lines)


def _backbone(c: Checkpoint) -> str:
    m = c.store.provenance.model
    return f"{m.id or '?'} ({m.architecture or '?'}, {m.dtype or '?'}, quantization {m.quantization or '?'})"
