"""`extract`: run a frozen (optionally 4-bit) LLM once over a dataset into a feature store."""

from __future__ import annotations

import click

from featurestore.cli import Command
from featurestore.options import config_from_options, config_options

from .backbones import quiet_libraries
from .config import ExtractConfig
from .distributed import Ranks
from .run import extract


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@config_options(ExtractConfig)
def main(**options) -> None:
    """Run a frozen backbone once over a dataset and store its per-layer hidden states.

    The store (a Zarr v3 group under --root) holds the token layout, loss masks (1 on answer
    tokens), compressed hidden states of the chosen layers and the frozen LM head, so that
    `train_side` can train side networks from it with no backbone in memory.

    Launched by torchrun, the ranks (one GPU each: cuda:LOCAL_RANK; gloo on CPU) write disjoint
    shards of one store and rank 0 completes it once every rank succeeded. A second run of the
    same store into the same --root waits for the first, then reports a cache hit.

    \b
    Examples:
      extract                                    # SmolLM2-135M over the arith train split
      extract --split test --limit 200
      extract --model ./my-llama --quantization nf4 --dataset gsm8k.jsonl --layers every:2
      extract --model ./my-llama --layers all --dry-run   # tokens, store size, time; no weights load
      torchrun --nproc-per-node 4 -m extract --model ./my-llama --root /shared/stores
    """
    quiet_libraries()
    try:
        result = extract(config_from_options(ExtractConfig, options))
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; finished shards are kept: rerun with --resume to continue") from None
    if not Ranks.from_env().leader:
        return  # rank 0 reports for every rank
    if result.converted is not None:  # the one thing a dry run writes: the model's tokenizer and config are in it
        click.echo(f"converted the packaged {result.converted.name.rsplit('-', 1)[0]} into {result.converted} "
                   "(once: later runs reuse it)", err=True)
    if result.dry_run:
        click.echo("\n".join(result.estimate.lines()))
        click.echo(f"cache hit: {result.store} already holds this store" if result.cached
                   else f"would write {result.store} (fingerprint {result.fingerprint[:12]}); no weights were "
                        "loaded and no store written")
        return
    if result.cached:
        click.echo(f"cache hit: {result.store} already holds this store (fingerprint {result.fingerprint[:12]}); "
                   "nothing to compute")
        return
    if result.n_truncated:
        click.echo(f"warning: {result.n_truncated} examples longer than --max-length were truncated "
                   "(--skip-long drops them)", err=True)
    if result.n_skipped:
        click.echo(f"warning: {result.n_skipped} examples skipped (too long, or no answer left within --max-length)",
                   err=True)
    from featurestore import FeatureStore, inventory

    store = FeatureStore.open(result.store)
    footprint = inventory.Footprint.measure(store.group.store, store.attrs)
    kept = result.n_tokens - result.computed_tokens  # a resume keeps the shards finished before
    resumed = f" ({result.computed_tokens:,} computed now, {kept:,} kept from before)" if kept > 0 else ""
    click.echo(f"extracted {result.n_examples:,} examples, {result.n_tokens:,} tokens{resumed} "
               f"in {result.seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s computed)")
    click.echo(f"store        {result.store}\nfingerprint  {result.fingerprint}\nsize         {footprint.size()} "
               f"(estimated {inventory.human_bytes(result.estimate.store_bytes)})\n"
               f"bytes/token  {footprint.per_token(result.n_tokens, len(store.layers))}")

