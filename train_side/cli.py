"""`train_side`: train Ladder / xLadder side networks from a feature store, one or a sweep."""

from __future__ import annotations

import functools
from pathlib import Path

import click
import yaml

from featurestore.cli import Group, cache_option
from featurestore.errors import UserError
from featurestore.options import config_from_options, config_options, config_values

from featurestore.hub import is_hf_url

from .config import PROBE_LR, DataConfig, GenerateConfig, OptimConfig
from .inference.hub import fetch_run
from .network.model import SideConfig
from .training.rundir import BEST
from .training.sweep import SETTINGS as SWEEP_SETTINGS
from .training.sweep import format_table, grid_of, load_grid, parse_grid_options, sweep
from .training.trackers import TRACKERS
from .training.train import recipe, train
from .training.space import Search


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Train Ladder / xLadder side networks from a feature store written by `extract`.

    Training reads hidden states from the store only: no backbone is loaded, so many runs fit on
    a small GPU or a CPU. `sweep` trains a grid of settings over one pass of the data. STORE is a
    path or a URL (http(s)://, s3://, gs://, file://, hf://datasets/ORG/NAME), read through a local
    cache (--cache-dir).

    \b
    Then use what you trained:
      train_side eval RUN                  accuracy on the store's dataset's test split
      train_side generate RUN "question"   your own prompts, streamed (or --chat)
      train_side push RUN hf://ORG/NAME    share it; RUN may be hf://ORG/NAME wherever a run is read
    In Python: from train_side import SideModel; SideModel.from_pretrained(RUN).generate(...)
    """


def training_options(command):
    """The options shared by `train` and `sweep` (a sweep's base settings): one per setting of
    SideConfig (but the backbone's sizes, read from the store), OptimConfig and DataConfig, whose
    fields give their defaults and help; and --config, which reads any of them from a file."""
    options = [
        click.argument("store"),
        click.option("--config", type=click.Path(dir_okay=False, exists=True), is_eager=True, expose_value=False,
                     callback=read_config_file,
                     help="A YAML file of this command's options (names with dashes or underscores, e.g. "
                          "'lr: 0.003'); options given on the command line override it. A run's own "
                          "train_config.yaml (a sweep's sweep_config.yaml) trains it again."),
        cache_option,
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory."),
        config_options(SideConfig, OptimConfig, DataConfig),
        click.option("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]."),
        click.option("--log", type=click.Choice(TRACKERS), default="none",
                     help="Also log the metrics to TensorBoard (event files in each run directory: "
                          "tensorboard --logdir OUT) or trackio (pip install trackio; trackio show)."),
        click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out."),
        click.option("--keep-resume", is_flag=True,
                     help="Keep resume.pt (the optimizer state) when a run finishes; it is deleted otherwise."),
        click.option("--threads", type=click.IntRange(min=0), default=0, callback=set_threads, expose_value=False,
                     help="CPU threads torch computes with (0: torch's own choice, one per core)."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def read_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    """--config FILE: the command's options from a YAML mapping, by any of their names (``lr``,
    ``n-heads``, ``heads``, ``data_seed``), as the defaults of this invocation, so that an option
    given on the command line wins. A sweep's ``grid`` may be a mapping ``{setting: [values]}``
    (kept in ``ctx.meta["grid"]``) or a list of ``key=v1,v2``."""
    if path is None:
        return
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise click.BadParameter(f"cannot read {path}: {str(e).splitlines()[0]}", ctx, param) from None
    if not isinstance(values, dict):
        raise click.BadParameter(f"{path} must map option names to values, e.g. 'lr: 0.003'", ctx, param)
    params = {}
    for p in ctx.command.params:
        for name in (p.name, *(o.lstrip("-") for o in p.opts)):
            params[name.replace("-", "_")] = params[name.replace("_", "-")] = p
    unknown = sorted(str(key) for key in values if str(key) not in params or params[str(key)] is param)
    if unknown:
        raise click.BadParameter(f"{path} sets {', '.join(unknown)}, which are not options of `{ctx.info_name}` "
                                 "(see its --help)", ctx, param)
    defaults = {}
    for key, value in values.items():
        p = params[str(key)]
        if p.name == "grid_options" and isinstance(value, dict):
            ctx.meta["grid"] = value
        else:
            defaults[p.name] = [value] if getattr(p, "multiple", False) and isinstance(value, str) else value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def set_threads(ctx, param, threads: int) -> int:
    """--threads: torch's intra-op threads for this process (0 leaves torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return threads


def split_options(o: dict) -> tuple[dict, OptimConfig, DataConfig]:
    """The side settings (beyond the backbone's sizes), optimiser and data configs of the parsed
    options, popped from them (a Ladder-only setting given to another kind is refused by SideConfig)."""
    side = config_values(SideConfig, o)
    return side, config_from_options(OptimConfig, o), config_from_options(DataConfig, o)


@main.command("train")
@training_options
def train_cmd(**o) -> None:
    """Train one side network from STORE into --out: side.safetensors and side_config.json (the
    weights and settings of its last step), best/ (those of its best validation loss),
    train_config.yaml (its options: --config trains it again), metrics.jsonl, loss.png.

    \b
    Examples:
      train_side train stores/x.zarr --out runs/ladder --lr 3e-3 --early-stop 3 --log tensorboard
      train_side train --config runs/ladder/train_config.yaml --out runs/ladder-seed1 --seed 1
    """
    from featurestore import FeatureStore

    side, optim, data = split_options(o)
    store = FeatureStore.open(o["store"])  # once: train() takes it as it is
    if side.get("kind") is None:
        side = recipe(store, side)
        if side["kind"] == "top":  # not the paper's Ladder: say so before the larger network trains
            click.echo(f"kind: top, the backbone's top {side['delta']} blocks kept in the store (--kind chooses)",
                       err=True)
    run = train(store, o["out"], side=side, optim=optim, data=data, device=o["device"], resume=o["resume"],
                log=o["log"], keep_resume=o["keep_resume"])
    val = "n/a" if run.val_loss is None else f"{run.val_loss:.4f}"
    best = "" if run.best_loss is None else f" (best {run.best_loss:.4f}: {run.out / BEST})"
    stopped = ", stopped early" if run.stopped_early else ""
    click.echo(f"{run.side.kind}: {run.model.n_parameters():,} parameters, {run.step} steps{stopped} in "
               f"{run.seconds:.0f} s, validation loss {val}{best} -> {run.out}")


@main.command("sweep")
@training_options
@click.option("--grid", "grid_options", multiple=True,
              help="A swept setting: key=v1,v2 (repeatable), e.g. lr=1e-3,3e-3 or heads=2,4. A key is any "
                   "option above, without its dashes; a data setting (epochs=1,2) adds a data pass per value.")
@click.option("--grid-file", type=click.Path(dir_okay=False, exists=True), help="YAML/JSON {setting: [values]}.")
@click.option("--jobs", default=1, help="Split the runs across this many processes (each its own data pass).")
@click.pass_context
def sweep_cmd(ctx, grid_options, grid_file, jobs, **o) -> None:
    """Train every combination of a grid of settings from STORE, over ONE pass of the data per
    epoch: each batch is read and decoded once and fed to every side network. The other options
    are the base settings of every run.

    The data settings (--epochs, --max-steps, --token-budget, --grad-accum, --val-fraction,
    --data-seed, when to validate and save) are what makes that one pass possible: every run
    sees the same batches in the same order, so they are shared by the runs of a pass. A grid
    over a data setting (--grid epochs=1,2) trains one such pass per value, one after another.

    Each run goes in OUT/<its settings> (e.g. kind-ladder_lr-0.003: no quoting needed, a valid
    Hub repository name), with its full settings in its train_config.yaml. One line per run
    shows its progress; at the end the summary (summary.csv, val_loss.png) lists the runs by
    their best validation loss, the best marked *. With --early-stop, each run stops on its own
    while the others go on.

    \b
    Example:
      train_side sweep stores/x.zarr --out runs/sweep --grid kind=ladder,xladder --grid lr=1e-3,3e-3
    """
    side, optim, data = split_options(o)
    grid = grid_of(ctx.meta.get("grid", {}), "--config's grid") | (load_grid(grid_file) if grid_file else {})
    grid |= parse_grid_options(list(grid_options))
    rows = sweep(o["store"], o["out"], grid, side=side, optim=vars(optim), data=data, device=o["device"],
                 resume=o["resume"], jobs=jobs, log=o["log"], keep_resume=o["keep_resume"])
    click.echo(format_table(rows))
    click.echo(f"\nsummary: {o['out']}/summary.csv, {o['out']}/val_loss.png; settings: {o['out']}/{SWEEP_SETTINGS}")


@main.command("tune")
@training_options
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="YAML search space: setting: {low: L, high: H[, log: true]} (a range) or [v1, v2] (a choice).")
@click.option("--trials", required=True, type=click.IntRange(min=1), help="Trials the study holds when done.")
@config_options(Search)
@click.option("--storage", default=None, help="Optuna storage URL shared by the workers (default: sqlite:///OUT/"
                                              "study.db); postgresql://... or mysql://... for a team.")
@click.option("--study", "study_name", default=None, help="Study name in the storage (default: the name of --out).")
def tune_cmd(space_file, trials, storage, study_name, **o) -> None:
    """Search the settings of a YAML space (--space) with an Optuna study of --trials trials, trained
    --parallel at a time over ONE pass of the data, as a sweep's; each reports its validation loss
    at every evaluation and the pruner stops the losers. Any number of workers (this command, on
    one machine or many) join one study through --storage; run the same command again to resume.

    \b
    Example:
      train_side tune stores/x.zarr --out runs/tune --space space.yaml --trials 27 --parallel 27
    """
    from .training.space import load_space

    try:
        from .training.tune import tune
    except ModuleNotFoundError as e:
        if e.name != "optuna":
            raise
        raise click.ClickException("tune needs optuna: pip install 'ladder-cache[tune]'") from None
    search = config_from_options(Search, o, trials=trials)
    side, optim, data = split_options(o)
    outcome = tune(o["store"], o["out"], load_space(space_file), search, storage=storage, study_name=study_name,
                   side=side, optim=vars(optim), data=data, device=o["device"], echo=click.echo)
    click.echo("\n" + outcome.report)


tune_cmd.params = [p for p in tune_cmd.params if p.name != "resume"]  # a study always continues where it stopped


@main.command("eval")
@click.argument("checkpoint")
@click.option("--backbone-only", is_flag=True, help="Evaluate the checkpoint's backbone alone (the baseline).")
@click.option("--dataset", default=None, help="Default: the dataset of the checkpoint's store.")
@click.option("--split", default="test", help="The split of the dataset to answer (e.g. test, train[:10%]).")
@click.option("--limit", type=int, default=None, help="First N examples of the split.")
@config_options(GenerateConfig)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where predictions.jsonl and metrics.json go (default: CHECKPOINT/eval[-backbone]).")
@click.option("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N].")
def eval_cmd(checkpoint, **options) -> None:
    """Generate chain-of-thought answers with the backbone reloaded exactly as the checkpoint's
    store was extracted, the side network on top, and score them: exact-match accuracy (GSM8K
    `#### n`, last-number fallback) or label accuracy, mean CoT length, tokens/s."""
    from extract.backbones import quiet_libraries

    from .inference.evaluate import evaluate

    quiet_libraries()
    if is_hf_url(checkpoint) and options["out"] is None:  # not inside huggingface_hub's cache
        name = checkpoint.removeprefix("hf://").replace("/", "--")
        options["out"] = f"eval/{name}" + ("-backbone" if options["backbone_only"] else "")
    generation = config_from_options(GenerateConfig, options)
    m = evaluate(fetch_run(checkpoint), generation=generation, **options)
    click.echo(f"{m['model']} on {m['dataset']} {m['split']} ({m['examples']} examples, {m['decoding']}): "
               f"accuracy {m['accuracy']:.1%}, mean CoT {m['mean_cot_tokens']:.1f} tokens, "
               f"{m['tokens_per_second']:.1f} tokens/s")


@main.command("loss")
@click.argument("checkpoint")
@click.argument("store")
@click.option("--token-budget", default=4096)
@click.option("--device", default="auto")
@cache_option
def loss_cmd(checkpoint, store, token_budget, device) -> None:
    """Teacher-forced loss per target token of CHECKPOINT on every example of STORE (e.g. the
    test split's store). Needs no backbone."""
    from .inference.evaluate import teacher_forced_loss

    loss = teacher_forced_loss(fetch_run(checkpoint), store, token_budget, device)
    click.echo(f"teacher-forced loss {loss:.4f} per target token")


def parse_layers(value: str | None) -> list[int] | None:
    try:
        return None if value is None else [int(k) for k in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give layer numbers separated by commas, e.g. 0,10,20") from None


@main.command("probe")
@click.argument("store")
@cache_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where probe.json goes.")
@click.option("--layers", default=None, callback=lambda ctx, param, value: parse_layers(value),
              help="Stored layers to probe, e.g. 0,10,20,30 (default: every stored layer).")
@config_options(DataConfig, skip=("eval_every", "save_every", "grad_accum", "early_stop"))
@click.option("--lr", default=PROBE_LR, show_default=True, help="Peak learning rate of the probes (AdamW).")
@click.option("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N].")
def probe_cmd(store, out, layers, lr, device, **o) -> None:
    """How much of the next target token each stored layer already holds: one linear probe per
    layer (an affine map into the frozen head, a "tuned lens"), all trained together from STORE.
    Prints each layer's validation loss untrained (the "logit lens": the backbone's own head read at
    that layer) and trained. Where no layer's probe gets near a loss, no side network reading those
    states will either. Needs no backbone."""
    from featurestore import FeatureStore

    from .training.probe import probe_layers, write_table

    data = config_from_options(DataConfig, o)
    results = probe_layers(FeatureStore.open(store), layers, data, OptimConfig(lr=lr), device=device)
    click.echo(write_table(results, Path(out)))


@main.command("check")
@click.argument("store")
@click.option("--device", default="auto")
@cache_option
def check_cmd(store, device) -> None:
    """Check that the frozen head in STORE gives its backbone's own logits (extract does this on its
    first batch): reloads the backbone exactly as extracted and compares on the first examples."""
    from extract.backbones import quiet_libraries

    from .inference.check import check_store

    quiet_libraries()
    result = check_store(store, device)
    click.echo(f"head check passed: largest difference {result.difference:.3g} from the model's logits "
               f"(allowed {result.allowed:.3g}; largest logit {result.largest:.3g})")


@main.command("generate")
@click.argument("run")
@click.argument("prompts", nargs=-1)
@click.option("--file", "prompt_file", type=click.File("r", encoding="utf-8"), default=None,
              help="Read prompts from this file, one per line ('-': standard input).")
@click.option("--chat", is_flag=True, help="Interactive: type a question, read the answer as it is generated, "
                                           "repeat; an empty line or Ctrl-D ends. Each question is answered on "
                                           "its own (the run's template is single-turn).")
@config_options(GenerateConfig, skip=("batch_size",))  # one prompt at a time, streamed
@click.option("--stop", "stops", multiple=True, help="Also stop an answer once it contains this text (repeatable); "
                                                     "every answer stops at EOS and after its final '#### n' line, "
                                                     "as eval's do.")
@click.option("--raw", is_flag=True, help="Send each prompt as it is, without the run's prompt template.")
@click.option("--backbone-only", is_flag=True, help="The run's backbone alone (the baseline), same template.")
@click.option("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N].")
def generate_cmd(run, prompts, prompt_file, chat, stops, raw, backbone_only, device, **options) -> None:
    """Answer your own prompts with the side network of RUN (a run directory or hf://ORG/NAME),
    streaming the text as it is generated.

    The backbone is reloaded exactly as the run's store was extracted (another is refused), and each
    prompt is put in the run's own template (plain `Question: ... Answer:` or the chat template),
    as in training. Prompts come from the arguments, from --file, or from standard input one per
    line when piped; --chat asks for them interactively.

    \b
    Examples:
      train_side generate runs/ladder "What is 12 * 7?"
      train_side generate runs/ladder --file questions.txt --temperature 0.7 --top-p 0.9
      echo "What is 3 + 4?" | train_side generate hf://my-team/smollm2-arith-ladder
      train_side generate runs/ladder --chat
    """
    import sys
    import time

    from extract.backbones import quiet_libraries

    if chat and (prompts or prompt_file):
        raise click.UsageError("--chat reads questions interactively; drop the prompts and --file")
    if not chat and not prompts and prompt_file is None:
        if sys.stdin.isatty():
            raise click.UsageError('give prompts as arguments, --file FILE, lines on standard input, or --chat: '
                                   'train_side generate RUN "What is 12 * 7?"')
        prompt_file = sys.stdin
    if any(not p.strip() for p in prompts):
        raise click.UsageError('a prompt is empty: give the question\'s text, e.g. train_side generate RUN "What is 12 * 7?"')
    quiet_libraries()
    try:
        from transformers import TextStreamer

        from extract.tasks.answers import answer_end

        from .inference.side_model import SideModel

        model = SideModel.from_pretrained(run, device=device, backbone_only=backbone_only)
        streamer = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
        task_end = answer_end(model.checkpoint.store.provenance.dataset.labels)  # where eval stops: the answer line
        settings = dict(generation_config=config_from_options(GenerateConfig, options), streamer=streamer,
                        stop_strings=[task_end, *stops])

        def answer(question: str) -> int:
            ids = model.tokenizer(question, add_special_tokens=False).input_ids if raw else model.encode(question)
            new = model.generate([ids], **settings)[0, len(ids):].tolist()
            if new and new[0] in model.eos_token_ids:  # else the streamer prints nothing and leaves you guessing
                click.echo("(the answer ended at once: the first token generated was end-of-sequence; the "
                           "network may be under-trained)", err=True)
            return len(new)

        if chat:
            click.echo(f"{model.checkpoint.side.kind if not backbone_only else 'backbone'} on "
                       f"{model.backbone.info['id']}; an empty line or Ctrl-D ends.", err=True)
            while question := click.prompt("", prompt_suffix="> ", default="", show_default=False).strip():
                answer(question)
            return
        questions = list(prompts) + ([line.strip() for line in prompt_file if line.strip()] if prompt_file else [])
        n, start = 0, time.perf_counter()
        for i, question in enumerate(questions):
            if len(questions) > 1:
                click.echo(f"{'' if i == 0 else chr(10)}> {question}")
            n += answer(question)
        click.echo(f"({n} tokens in {time.perf_counter() - start:.1f} s)", err=True)
    except click.Abort:  # Ctrl-D / Ctrl-C at the chat prompt
        click.echo("", err=True)


@main.command("push")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.argument("url")
@click.option("--private", is_flag=True, help="Create the repository private (when it does not exist yet).")
def push_cmd(run, url, private) -> None:
    """Share the trained side network in RUN on the Hugging Face Hub at URL (hf://ORG/NAME).

    Sends side.safetensors, side_config.json, metrics.jsonl, the plots, the metrics of its
    evaluations and a generated model card (backbone, store fingerprint, data, measured metrics) in
    one commit, so an interrupted push leaves the repository as it was. Never the optimizer state.
    Log in first (`hf auth login` or $HF_TOKEN). Others then run `train_side generate URL "..."`
    or `SideModel.from_pretrained("URL")`; push the store too (`featurestore push STORE
    hf://datasets/ORG/NAME`) to let them train from it.
    """
    from .inference.hub import push_run

    try:
        pushed = push_run(run, url, private=private or None)
    except UserError:
        raise  # the boundary's, not one of the foreign errors below (CheckpointError is an OSError)
    except OSError as e:  # huggingface_hub's HTTP errors: unreachable, not logged in, no write access
        raise click.ClickException(f"cannot push to {url}: {str(e).splitlines()[0]}; check `hf auth login` and "
                                   "your access, then re-run (nothing was committed)") from None
    click.echo(f"{len(pushed.files)} files pushed to {pushed.url}: {', '.join(pushed.files)}")
