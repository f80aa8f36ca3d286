"""`train_side`: train Ladder / xLadder side networks from a feature store, one or a sweep."""

from __future__ import annotations

import functools

import click

from featurestore import StoreError
from featurestore.cli import cache_option

from .sweep import GridError, format_table, load_grid, parse_grid_options, sweep
from .train import DataConfig, OptimConfig, train

ERRORS = (StoreError, GridError, ValueError, FileExistsError, FileNotFoundError)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Train Ladder / xLadder side networks from a feature store written by `extract`.

    Training reads hidden states from the store only: no backbone is loaded, so many runs fit on
    a small GPU or a CPU. `sweep` trains a grid of settings over one pass of the data. STORE is a
    path or a URL (http(s)://, s3://, gs://, file://), read through a local cache (--cache-dir).
    """


def training_options(command):
    """The options shared by `train` and `sweep` (a sweep's base settings)."""
    options = [
        click.argument("store"),
        cache_option,
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory."),
        click.option("--kind", type=click.Choice(["ladder", "xladder"]), default="ladder"),
        click.option("--taps", default=None, help="Ladder: backbone blocks feeding ladders, e.g. 10,20,30 (default all)."),
        click.option("--every", default=1, help="Ladder without --taps: every k-th block, counted down from L."),
        click.option("--delta", default=2, help="xLadder: top blocks tapped; the side network has 2*delta blocks."),
        click.option("--reduction", default=8, help="Side width = backbone width / reduction."),
        click.option("--side-width", type=int, default=None, help="Explicit side width (overrides --reduction)."),
        click.option("--heads", type=int, default=None, help="Attention heads of the side blocks (default width/32)."),
        click.option("--no-mix", is_flag=True, help="Do not mix the output with the backbone's final state."),
        click.option("--lr", default=3e-3),
        click.option("--weight-decay", default=0.01),
        click.option("--warmup", default=0.05, help="Fraction of steps of linear warmup (then cosine)."),
        click.option("--seed", default=0, help="Initialisation seed."),
        click.option("--recompute/--no-recompute", default=True,
                     help="Recompute side-block activations in backward: much less memory for ~7% more time."),
        click.option("--epochs", default=2),
        click.option("--token-budget", default=4096, help="Padded tokens per batch."),
        click.option("--val-fraction", default=0.05, help="Held-out examples of the store for validation loss."),
        click.option("--data-seed", default=0, help="Seed of the validation split and batch order."),
        click.option("--eval-every", default=0, help="Steps between validations (0: each epoch)."),
        click.option("--save-every", default=0, help="Steps between checkpoints (0: each epoch)."),
        click.option("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]."),
        click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def split_options(o: dict) -> tuple[dict, OptimConfig, DataConfig]:
    side = {"kind": o["kind"], "delta": o["delta"], "reduction": o["reduction"], "side_width": o["side_width"],
            "n_heads": o["heads"], "mix": not o["no_mix"]}
    if o["kind"] == "ladder":
        side |= {"taps": [int(t) for t in o["taps"].split(",")] if o["taps"] else None, "every": o["every"]}
    optim = OptimConfig(lr=o["lr"], weight_decay=o["weight_decay"], warmup=o["warmup"], seed=o["seed"],
                        recompute=o["recompute"])
    data = DataConfig(epochs=o["epochs"], token_budget=o["token_budget"], val_fraction=o["val_fraction"],
                      seed=o["data_seed"], eval_every=o["eval_every"], save_every=o["save_every"])
    return side, optim, data


@main.command("train")
@training_options
def train_cmd(**o) -> None:
    """Train one side network from STORE into --out (side.safetensors, side_config.json,
    metrics.jsonl, loss.png)."""
    side, optim, data = split_options(o)
    try:
        run = train(o["store"], o["out"], side=side, optim=optim, data=data, device=o["device"], resume=o["resume"])
    except ERRORS as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    val = "n/a" if run.val_loss is None else f"{run.val_loss:.4f}"
    click.echo(f"{run.side.kind}: {run.model.n_parameters():,} parameters, {run.step} steps in {run.seconds:.0f} s, "
               f"validation loss {val} -> {run.out}")


@main.command("sweep")
@training_options
@click.option("--grid", "grid_options", multiple=True, help="A swept setting: key=v1,v2 (repeatable), e.g. lr=1e-3,3e-3.")
@click.option("--grid-file", type=click.Path(dir_okay=False, exists=True), help="YAML/JSON {setting: [values]}.")
@click.option("--jobs", default=1, help="Split the runs across this many processes (each its own data pass).")
def sweep_cmd(grid_options, grid_file, jobs, **o) -> None:
    """Train every combination of a grid of settings from STORE, over ONE pass of the data per
    epoch: each batch is read and decoded once and fed to every side network.

    \b
    Example:
      train_side sweep stores/x.zarr --out runs/sweep --grid kind=ladder,xladder --grid lr=1e-3,3e-3
    """
    side, optim, data = split_options(o)
    try:
        grid = (load_grid(grid_file) if grid_file else {}) | parse_grid_options(list(grid_options))
        rows = sweep(o["store"], o["out"], grid, side=side, optim=vars(optim), data=data, device=o["device"],
                     resume=o["resume"], jobs=jobs)
    except ERRORS as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    click.echo(format_table(rows))
    click.echo(f"\nsummary: {o['out']}/summary.csv, {o['out']}/val_loss.png")


@main.command("eval")
@click.argument("checkpoint", type=click.Path(file_okay=False, exists=True))
@click.option("--backbone-only", is_flag=True, help="Evaluate the checkpoint's backbone alone (the baseline).")
@click.option("--dataset", default=None, help="Default: the dataset of the checkpoint's store.")
@click.option("--split", default="test")
@click.option("--limit", type=int, default=None, help="First N examples of the split.")
@click.option("--max-new-tokens", default=128)
@click.option("--batch-size", default=16, help="Sequences generated together (left-padded).")
@click.option("--temperature", default=0.0, help="0: greedy; above 0: nucleus sampling.")
@click.option("--top-p", default=1.0)
@click.option("--seed", default=0, help="Sampling seed.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where predictions.jsonl and metrics.json go (default: CHECKPOINT/eval[-backbone]).")
@click.option("--device", default="auto")
def eval_cmd(checkpoint, **options) -> None:
    """Generate chain-of-thought answers with the backbone reloaded exactly as the checkpoint's
    store was extracted, the side network on top, and score them: exact-match accuracy (GSM8K
    `#### n`, last-number fallback) or label accuracy, mean CoT length, tokens/s."""
    from extract.backbone import BackboneError, quiet_libraries
    from extract.data import DataError

    from .evaluate import EvalError, evaluate

    quiet_libraries()
    try:
        m = evaluate(checkpoint, **options)
    except (*ERRORS, EvalError, BackboneError, DataError) as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    click.echo(f"{m['model']} on {m['dataset']} {m['split']} ({m['examples']} examples, {m['decoding']}): "
               f"accuracy {m['accuracy']:.1%}, mean CoT {m['mean_cot_tokens']:.1f} tokens, "
               f"{m['tokens_per_second']:.1f} tokens/s")


@main.command("loss")
@click.argument("checkpoint", type=click.Path(file_okay=False, exists=True))
@click.argument("store")
@click.option("--token-budget", default=4096)
@click.option("--device", default="auto")
@cache_option
def loss_cmd(checkpoint, store, token_budget, device) -> None:
    """Teacher-forced loss per target token of CHECKPOINT on every example of STORE (e.g. the
    test split's store). Needs no backbone."""
    from .evaluate import EvalError, teacher_forced_loss

    try:
        loss = teacher_forced_loss(checkpoint, store, token_budget, device)
    except (*ERRORS, EvalError) as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    click.echo(f"teacher-forced loss {loss:.4f} per target token")
