"""SideModel: a trained run as a model in the user's code, equal to the project's own generation loop."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from extract.backbones import load_backbone
from extract.run import extract
from extract.tasks.datasets import load_examples
from extract.tasks.prompts import encode_prompt
from featurestore import FeatureStore
from train_side import SideModel, checkpoint
from train_side.cli import main
from train_side.backbone import BackboneError
from train_side.config import DataConfig, GenerateConfig
from train_side.inference.generate import Pipeline, generate, left_pad
from train_side.inference.side_model import GenerationArgumentError
from train_side.network.model import FrozenHead
from train_side.training.train import train


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("side-model")
    store = extract(str(tiny_llama), limit=8, root=root / "stores", codec="int8o", progress=False).store
    out = root / "ladder"
    train(store, out, side={"side_width": 16, "n_heads": 2}, data=DataConfig(epochs=1, val_fraction=0.2),
          progress=False)
    return out


@pytest.fixture(scope="module")
def model(run):
    return SideModel.from_pretrained(run)


@pytest.fixture(scope="module")
def eval_pipeline(run, tiny_llama):
    """The pipeline `train_side eval` builds for the run, built here independently."""
    trained = checkpoint.Checkpoint.load(run)
    backbone = load_backbone(str(tiny_llama))
    store = FeatureStore.open(trained.store.location)
    return Pipeline(backbone, FrozenHead(*store.head()), checkpoint.load_side(run), store.codec)


@pytest.fixture(scope="module")
def prompts(model):
    examples, _ = load_examples("arith", "test", limit=3)
    return [encode_prompt(model.tokenizer, e.question, "plain") for e in examples]


def batch(prompts, pad_id):
    return left_pad(prompts, pad_id)


@pytest.mark.parametrize("sampling", [False, True])
def test_generate_equals_the_projects_loop_token_for_token(model, eval_pipeline, prompts, sampling):
    pad = model.tokenizer.pad_token_id
    eos = set(model.eos_token_ids)
    settings = dict(temperature=0.8, top_p=0.9, seed=7) if sampling else {}
    expected = generate(eval_pipeline, prompts, max_new_tokens=12, pad_id=pad, stop=lambda t: t[-1] in eos,
                        **settings)
    ids, mask = batch(prompts, pad)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=sampling,
                         **({"temperature": 0.8, "top_p": 0.9, "seed": 7} if sampling else {}))
    assert out.shape[0] == len(prompts) and torch.equal(out[:, : ids.shape[1]], ids)
    for row, tokens in zip(out[:, ids.shape[1]:].tolist(), expected):
        assert row[: len(tokens)] == tokens and set(row[len(tokens):]) <= {pad}


def test_sampling_repeats_after_torch_manual_seed(model, prompts):
    ids = torch.tensor([prompts[0]])
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(model.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=20))
    assert torch.equal(*runs)


def test_one_prompt_unpadded_and_as_a_list(model, prompts):
    ids = torch.tensor([prompts[1]])
    assert torch.equal(model.generate(ids, max_new_tokens=5), model.generate([prompts[1]], max_new_tokens=5))
    assert torch.equal(model.generate(ids, max_new_tokens=5), model.generate(ids[0], max_new_tokens=5))


def test_forward_gives_the_pipelines_logits_and_continues_from_its_cache(model, eval_pipeline, prompts):
    ids = torch.tensor([prompts[0]])
    logits = model(ids).logits
    assert torch.allclose(logits, eval_pipeline.step(ids, torch.ones_like(ids), eval_pipeline.start()), atol=1e-5)
    first = model(ids[:, :-3], use_cache=True)
    rest = model(ids[:, -3:], past_key_values=first.past_key_values)
    assert torch.allclose(rest.logits, logits[:, -3:], atol=1e-4)
    assert model(ids)[0].shape == logits.shape


def test_streamer_sees_the_prompt_then_each_new_token(model, prompts):
    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.tolist())

        def end(self):
            self.ended = True

    recorder = Recorder()
    ids = torch.tensor([prompts[0]])
    out = model.generate(ids, max_new_tokens=6, streamer=recorder)
    assert recorder.puts[0] == ids.tolist() and recorder.ended
    assert [t for step in recorder.puts[1:] for t in step] == out[0, ids.shape[1]:].tolist()


def test_a_text_streamer_prints_the_generated_text(model, prompts, capsys):
    from transformers import TextStreamer

    ids = torch.tensor([prompts[0]])
    out = model.generate(ids, max_new_tokens=6, streamer=TextStreamer(model.tokenizer, skip_prompt=True))
    assert capsys.readouterr().out.strip() == model.tokenizer.decode(out[0, ids.shape[1]:]).strip()


def test_generation_config_and_max_length(model, prompts):
    from transformers import GenerationConfig

    ids = torch.tensor([prompts[0]])
    assert model.generate(ids, generation_config=GenerationConfig(max_new_tokens=3), eos_token_id=[]).shape[1] == \
        ids.shape[1] + 3
    assert model.generate(ids, max_length=ids.shape[1] + 2, eos_token_id=[]).shape[1] == ids.shape[1] + 2


def test_unsupported_arguments_are_refused_by_name(model, prompts):
    ids = torch.tensor([prompts[0]])
    with pytest.raises(GenerationArgumentError, match="does not implement num_beams; it takes max_new_tokens"):
        model.generate(ids, num_beams=4)
    with pytest.raises(GenerationArgumentError, match="temperature > 0"):
        model.generate(ids, do_sample=True, temperature=0)


def test_an_empty_batch_is_refused(model):
    with pytest.raises(GenerationArgumentError, match="empty batch"):
        model.generate(torch.zeros(0, 4, dtype=torch.long))


def test_template_and_tokenizer(model, prompts):
    question = load_examples("arith", "test", limit=1)[0][0].question
    assert model.format(question) == f"Question: {question}\nAnswer:"
    assert model.encode(question) == prompts[0]
    assert model.tokenizer(model.format(question)).input_ids == prompts[0]


def test_a_shared_backbone_and_the_backbone_alone(run, model, prompts):
    alone = SideModel.from_pretrained(run, backbone=model.backbone, backbone_only=True)
    assert alone.backbone is model.backbone and alone.pipeline.side is None
    expected = generate(Pipeline(model.backbone, model.pipeline.head), [prompts[0]], max_new_tokens=5,
                        pad_id=0, stop=lambda t: False)[0]
    assert alone.generate([prompts[0]], max_new_tokens=5, eos_token_id=[])[0, len(prompts[0]):].tolist() == expected


def test_another_backbone_is_refused(run, model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock*"))
    config = checkpoint.load_config(copy)
    config["store"]["model"]["weights_hash"] = "0" * 64
    (copy / "side_config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match="differs from the one the store was extracted from"):
        SideModel.from_pretrained(copy)
    with pytest.raises(GenerationArgumentError, match="the backbone passed differs"):
        SideModel.from_pretrained(copy, backbone=model.backbone)


def test_cli_streams_answers_to_prompts_from_arguments_stdin_and_chat(run, model):
    question = load_examples("arith", "test", limit=1)[0][0].question
    expected = model.tokenizer.decode(model.generate([model.encode(question)], max_new_tokens=5)[0, len(model.encode(question)):],
                                      skip_special_tokens=True).strip()
    runner = CliRunner()
    result = runner.invoke(main, ["generate", str(run), question, "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert expected in result.stdout
    piped = runner.invoke(main, ["generate", str(run), "--max-new-tokens", "5"], input=f"{question}\n{question}\n")
    assert piped.exit_code == 0 and piped.stdout.count(expected) == 2 and f"> {question}" in piped.stdout
    chat = runner.invoke(main, ["generate", str(run), "--chat", "--max-new-tokens", "5"], input=f"{question}\n\n")
    assert chat.exit_code == 0 and expected in chat.stdout
    sampled = runner.invoke(main, ["generate", str(run), question, "--max-new-tokens", "5", "--temperature", "0.7",
                                   "--seed", "1"])
    assert sampled.exit_code == 0 and sampled.stdout == runner.invoke(
        main, ["generate", str(run), question, "--max-new-tokens", "5", "--temperature", "0.7", "--seed", "1"]).stdout


def test_cli_one_line_errors(run, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["generate", str(tmp_path / "nothing"), "hi"])
    assert missing.exit_code == 1 and "holds no side checkpoint" in missing.output
    both = runner.invoke(main, ["generate", str(run), "hi", "--chat"])
    assert both.exit_code == 2 and "--chat reads questions interactively" in both.output
    bad = runner.invoke(main, ["generate", str(run), "hi", "--top-p", "0"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_tokenizer_batch_equals_each_prompt_alone(model, side, monkeypatch):
    questions = [e.question for e in load_examples("arith", "test", limit=3)[0]]
    monkeypatch.setattr(model.tokenizer, "padding_side", side)
    batch = model.tokenizer([model.format(q) for q in questions], padding=True, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=6)
    width = batch["input_ids"].shape[1]
    for q, row in zip(questions, out[:, width:].tolist()):
        alone = model.generate([model.encode(q)], max_new_tokens=6)[0, len(model.encode(q)):].tolist()
        assert row[: len(alone)] == alone


@pytest.mark.slow
def test_smollm2_with_the_chat_template(tmp_path):
    """The packaged SmolLM2 end to end in the chat template: format() is the chat prompt, tokenizing it
    gives the training prompt ids, and generate() equals the project's loop."""
    store = extract("smollm2-135m", limit=4, template="chat", root=tmp_path / "stores", progress=False).store
    train(store, tmp_path / "run", side={"kind": "xladder", "delta": 1}, data=DataConfig(epochs=1), progress=False)
    model = SideModel.from_pretrained(tmp_path / "run")
    question = "What is 12 * 7?"
    assert model.format(question).startswith("<|im_start|>") and model.format(question).endswith("assistant\n")
    ids = model.tokenizer(model.format(question), return_tensors="pt").input_ids
    assert ids[0].tolist() == model.encode(question)
    eos = set(model.eos_token_ids)
    expected = generate(model.pipeline, [ids[0].tolist()], max_new_tokens=8, pad_id=model.tokenizer.pad_token_id,
                        stop=lambda t: t[-1] in eos)[0]
    assert model.generate(ids, max_new_tokens=8)[0, ids.shape[1]:].tolist()[: len(expected)] == expected


def test_generate_says_when_the_answer_ends_at_its_first_token(run, monkeypatch):
    from click.testing import CliRunner

    from train_side.cli import main

    def ends_at_once(self, input_ids, **kwargs):  # an under-trained network: EOS first
        ids = torch.as_tensor(input_ids)
        return torch.cat([ids, torch.full((len(ids), 1), self.eos_token_ids[0])], dim=1)

    monkeypatch.setattr(SideModel, "generate", ends_at_once)
    result = CliRunner().invoke(main, ["generate", str(run), "What is 2 + 2?"])
    assert result.exit_code == 0, result.output
    assert "the first token generated was end-of-sequence" in result.output and "under-trained" in result.output


def test_stop_strings_end_a_row_once_its_new_text_holds_one(model, prompts):
    import re

    from transformers.generation.utils import GenerateDecoderOnlyOutput

    ids = torch.tensor([prompts[0]])
    free = model.generate(ids, max_new_tokens=12, eos_token_id=[])[0, ids.shape[1]:].tolist()
    text = [model.tokenizer.decode(free[:n], skip_special_tokens=True) for n in range(1, len(free) + 1)]
    cut = next(n for n in range(2, len(free)) if text[n - 1].strip() and text[n - 1] != text[n - 2])
    stop = text[cut - 1][-1]  # the last character of the text after `cut` tokens: first seen then or before
    first = next(n for n in range(1, len(free) + 1) if stop in text[n - 1])
    stopped = model.generate(ids, max_new_tokens=12, eos_token_id=[], stop_strings=stop)
    assert stopped[0, ids.shape[1]:].tolist() == free[:first]
    by_regex = model.generate(ids, max_new_tokens=12, eos_token_id=[], stop_strings=[re.compile(re.escape(stop))])
    assert torch.equal(by_regex, stopped)
    out = model.generate(ids, max_new_tokens=3, eos_token_id=[], return_dict_in_generate=True)
    assert isinstance(out, GenerateDecoderOnlyOutput) and out.sequences.shape[1] == ids.shape[1] + 3


def test_min_new_tokens_and_repetition_penalty_as_transformers_generate(run, model, tiny_llama, prompts):
    """On the backbone alone, SideModel.generate equals transformers' own generate() of the same model
    for min_new_tokens (EOS suppressed until then) and repetition_penalty."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    alone = SideModel.from_pretrained(run, backbone=model.backbone, backbone_only=True)
    ids = torch.tensor([prompts[0]])
    pad = model.tokenizer.pad_token_id
    first = int(alone.generate(ids, max_new_tokens=1, eos_token_id=[])[0, -1])  # made EOS: the answer ends at once
    for settings in ({"min_new_tokens": 4}, {"repetition_penalty": 1.8}, {"repetition_penalty": 0.7},
                     {"min_new_tokens": 3, "repetition_penalty": 1.3}):
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                      eos_token_id=first, pad_token_id=pad, **settings)
        assert torch.equal(alone.generate(ids, max_new_tokens=10, eos_token_id=first, **settings), expected), settings
    assert alone.generate(ids, max_new_tokens=10, eos_token_id=first).shape[1] == ids.shape[1] + 1
    free = alone.generate(ids, max_new_tokens=10, eos_token_id=[])
    assert not torch.equal(alone.generate(ids, max_new_tokens=10, eos_token_id=[], repetition_penalty=1.8), free)
    assert alone.generate(ids, max_new_tokens=10, eos_token_id=first, min_new_tokens=4).shape[1] >= ids.shape[1] + 4
    with pytest.raises(GenerationArgumentError, match="repetition_penalty must be above 0"):
        alone.generate(ids, repetition_penalty=0)


def test_generation_settings_come_from_generate_config(model, prompts):
    """GenerateConfig is the one place of generation defaults: as a generation_config its new fields
    act, and the model's transformers generation_config states the same defaults."""
    from transformers import GenerationConfig

    ids = torch.tensor([prompts[0]])
    direct = model.generate(ids, max_new_tokens=6, repetition_penalty=1.5, min_new_tokens=2)
    assert torch.equal(model.generate(ids, generation_config=GenerateConfig(max_new_tokens=6, repetition_penalty=1.5,
                                                                           min_new_tokens=2)), direct)
    assert torch.equal(model.generate(ids, generation_config=GenerationConfig(
        max_new_tokens=6, repetition_penalty=1.5, min_new_tokens=2)), direct)
    defaults = GenerateConfig()
    config = model.generation_config
    assert (config.max_new_tokens, config.min_new_tokens, config.repetition_penalty, config.do_sample) == \
        (defaults.max_new_tokens, defaults.min_new_tokens, defaults.repetition_penalty, False)
    assert config.eos_token_id == model.eos_token_ids


def test_side_model_is_a_torch_module(model, prompts):
    ids = torch.tensor([prompts[0]])
    before = model(ids).logits
    assert isinstance(model, torch.nn.Module) and not model.training
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert names == {"base_model", "side"}
    assert sum(p.numel() for p in model.side.parameters()) == model.checkpoint.n_parameters
    assert model.config is model.base_model.config and model.config.model_type == "llama"
    assert model.side_config == model.checkpoint.side
    assert model.to("cpu") is model and model.device == torch.device("cpu") and model.eval() is model
    with pytest.raises(GenerationArgumentError, match="give .to\\(\\) a device only"):
        model.to(torch.float16)
    assert torch.equal(model(ids).logits, before)


def test_save_pretrained_and_from_pretrained_round_trip(run, model, prompts, tmp_path):
    """What save_pretrained writes loads back with the side network's current weights."""
    ids = torch.tensor([prompts[0]])
    changed = SideModel.from_pretrained(run, backbone=model.backbone)
    with torch.no_grad():
        for parameter in changed.side.parameters():  # as further training would
            parameter.add_(0.01)
    changed.save_pretrained(tmp_path / "saved")
    loaded = SideModel.from_pretrained(tmp_path / "saved", backbone=model.backbone)
    assert torch.equal(loaded(ids).logits, changed(ids).logits)
    assert not torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.checkpoint.to_json() == model.checkpoint.to_json()
    with pytest.raises(GenerationArgumentError, match="no side network to save"):
        SideModel.from_pretrained(run, backbone=model.backbone, backbone_only=True).save_pretrained(tmp_path / "x")


def test_transformers_text_generation_pipeline_runs_generate(model):
    from transformers import pipeline

    question = load_examples("arith", "test", limit=1)[0][0].question
    pipe = pipeline("text-generation", model=model, tokenizer=model.tokenizer)
    ids = torch.tensor([model.encode(question)])
    new = model.generate(ids, max_new_tokens=6)[0, ids.shape[1]:]
    expected = model.tokenizer.decode(new, skip_special_tokens=True)
    assert pipe(model.format(question), max_new_tokens=6, return_full_text=False)[0]["generated_text"] == expected
    torch.manual_seed(5)
    sampled = pipe(model.format(question), max_new_tokens=6, do_sample=True, temperature=0.9,
                   return_full_text=False)[0]["generated_text"]
    torch.manual_seed(5)
    again = model.generate(ids, max_new_tokens=6, do_sample=True, temperature=0.9)[0, ids.shape[1]:]
    assert sampled == model.tokenizer.decode(again, skip_special_tokens=True)


def test_cli_takes_the_new_generation_settings(run, model):
    question = load_examples("arith", "test", limit=1)[0][0].question
    ids = [model.encode(question)]
    new = model.generate(ids, max_new_tokens=5, min_new_tokens=5, repetition_penalty=1.5)[0, len(ids[0]):]
    expected = model.tokenizer.decode(new, skip_special_tokens=True).strip()
    result = CliRunner().invoke(main, ["generate", str(run), question, "--max-new-tokens", "5", "--min-new-tokens", "5",
                                       "--repetition-penalty", "1.5"])
    assert result.exit_code == 0, result.output
    assert expected in result.stdout
    bad = CliRunner().invoke(main, ["generate", str(run), question, "--repetition-penalty", "0"])
    assert bad.exit_code == 2 and "--repetition-penalty" in bad.output
