"""`extract`: run a frozen (optionally 4-bit) LLM once over a dataset into a feature store."""

from __future__ import annotations

import click

from featurestore import CODECS, CodecError, StoreError

from .backbone import QUANTIZATIONS, BackboneError, quiet_libraries
from .data import DataError
from .distributed import DistributedError, Ranks
from .plan import PlanError
from .prompts import TEMPLATES, TemplateError
from .run import extract

ERRORS = (BackboneError, DataError, PlanError, TemplateError, StoreError, CodecError, DistributedError)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", default="smollm2-135m",
              help="Packaged alias (smollm2-135m, gemma3-270m), local HF directory, or hub id.")
@click.option("--dataset", default="arith",
              help="arith (built-in), a local .json/.jsonl/.parquet/.csv file, or a hub id[:config].")
@click.option("--split", default="train", help="Dataset split; slices like 'train[:90%]' work for files.")
@click.option("--root", default="stores", type=click.Path(file_okay=False),
              help="Directory of stores; a store with the same fingerprint there is a cache hit.")
@click.option("--quantization", type=click.Choice(QUANTIZATIONS), default="none", help="bitsandbytes quantization.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              help="auto: bfloat16 on CUDA, float32 on CPU.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--question-field", default="question", help="Column holding the question.")
@click.option("--answer-field", default="answer", help="Column holding the answer (the training target).")
@click.option("--template", type=click.Choice(TEMPLATES), default="plain",
              help="plain: 'Question: ...\\nAnswer: ...'; chat: the tokenizer's chat template.")
@click.option("--max-length", default=512, help="Longer examples are truncated (counted) or, with --skip-long, dropped.")
@click.option("--skip-long", is_flag=True, help="Drop examples longer than --max-length instead of truncating.")
@click.option("--layers", default="all", help="Hidden states to store: all, a list like 0,4,8, every:K or top:D.")
@click.option("--codec", default="int8o", help=f"{', '.join(CODECS)} (int8o: ~3x smaller than fp16, <=2% error per token).")
@click.option("--token-budget", default=4096, help="Padded tokens per forward batch.")
@click.option("--chunk-mb", default=4.0, help="Target chunk size of the stored arrays (a shard holds 2 chunks).")
@click.option("--limit", type=int, default=None, help="Keep the first N examples (arith: generate N).")
@click.option("--seed", default=0, help="Seed of the arith generator.")
@click.option("--resume", is_flag=True, help="Continue an interrupted extraction after its last finished shard.")
@click.option("--name", default=None, help="Store directory name (default: <model>-<dataset>-<split>-<fingerprint>).")
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
      torchrun --nproc-per-node 4 -m extract --model ./my-llama --root /shared/stores
    """
    quiet_libraries()
    try:
        result = extract(**options)
    except ERRORS as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; finished shards are kept: rerun with --resume to continue") from None
    if not Ranks.from_env().leader:
        return  # rank 0 reports for every rank
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
    from featurestore.storage import size_on_disk

    size = size_on_disk(result.store)
    click.echo(f"extracted {result.n_examples:,} examples, {result.n_tokens:,} tokens "
               f"in {result.seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s computed)")
    click.echo(f"store        {result.store}\nfingerprint  {result.fingerprint}\n"
               f"size         {size / 2**20:.1f} MB ({size / result.n_tokens:,.0f} bytes/token)")

