import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from extract.tasks import arith
from extract.tasks.examples import make_example
from extract.tasks.prompts import (
    TemplateError,
    encode_example,
    encode_prompt,
    fit_length,
    template_info,
)

# A template that writes BOS itself, as Llama 3's and Gemma's do.
TINY_CHAT = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
             "{% if add_generation_prompt %}<assistant>{% endif %}")

EXAMPLES = arith.generate(3, seed=0) + [
    make_example("Natalia sold 48 clips. How many?", "Natalia sold 48/2 = <<48/2=24>>24.\n#### 1,234", 3),
    make_example("Is this good?", "positive", 4),
]


def tiny_tokenizer(chat_template: str | None = TINY_CHAT) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer that, unlike SmolLM2's, adds BOS to every text it encodes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([e.question + "\n" + e.answer for e in EXAMPLES], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    wrapped.chat_template = chat_template
    return wrapped


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer()


@pytest.fixture(params=[pytest.param("smollm2", marks=pytest.mark.slow), "tiny"])
def tokenizer(request):
    return request.getfixturevalue("smollm2_tokenizer" if request.param == "smollm2" else "tiny")


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_loss_mask_covers_exactly_the_answer(tokenizer, template):
    for example in EXAMPLES:
        ids, mask = encode_example(tokenizer, example, template)
        prompt = encode_prompt(tokenizer, example.question, template)
        assert ids[: len(prompt)] == prompt, "generation starts from exactly the trained prefix"
        assert mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        answer = tokenizer.decode(ids[len(prompt):])
        assert answer == (" " if template == "plain" else "") + example.answer + tokenizer.eos_token
        assert ids[-1] == tokenizer.eos_token_id, "the model learns to stop"
        assert ids[:2] != [tokenizer.bos_token_id] * 2, "BOS never comes twice"


@pytest.mark.slow
def test_smollm2_prompts_match_the_tokenizer(smollm2_tokenizer):
    question = EXAMPLES[0].question
    assert encode_prompt(smollm2_tokenizer, question, "plain") == smollm2_tokenizer.encode(
        f"Question: {question}\nAnswer:", add_special_tokens=False)
    chat = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert encode_prompt(smollm2_tokenizer, question, "chat") == list(chat)


def test_bos_added_once(tiny):
    for template in ("plain", "chat"):
        ids, _ = encode_example(tiny, EXAMPLES[0], template)
        assert ids[0] == tiny.bos_token_id and ids.count(tiny.bos_token_id) == 1
    no_bos_in_template = tiny_tokenizer(TINY_CHAT.removeprefix("{{ bos_token }}"))
    assert encode_prompt(no_bos_in_template, "Hi", "chat")[0] == tiny.bos_token_id


def test_template_errors(tiny):
    with pytest.raises(TemplateError, match="no chat template; use the plain template"):
        encode_example(tiny_tokenizer(None), EXAMPLES[0], "chat")
    with pytest.raises(TemplateError, match="no chat template"):
        template_info("chat", tiny_tokenizer(None))
    with pytest.raises(TemplateError, match="unknown template 'alpaca'; choose one of plain, chat"):
        encode_prompt(tiny, "Hi", "alpaca")
    inconsistent = tiny_tokenizer(TINY_CHAT.replace("{% if add_generation_prompt %}<assistant>",
                                                    "{% if add_generation_prompt %}<bot>"))
    with pytest.raises(TemplateError, match="cannot be split off"):
        encode_example(inconsistent, EXAMPLES[0], "chat")


@pytest.mark.slow
def test_template_info(tiny, smollm2_tokenizer):
    plain = template_info("plain", smollm2_tokenizer)
    assert plain["prompt"] == "Question: {question}\nAnswer:"
    assert plain["eos_token_id"] == smollm2_tokenizer.eos_token_id
    chat = template_info("chat", smollm2_tokenizer)
    assert json.loads(json.dumps(chat)) == chat
    assert chat != template_info("chat", tiny)
    assert template_info("chat", tiny) == template_info("chat", tiny_tokenizer())


def test_fit_length():
    ids, mask = [1, 2, 3, 4, 5], [0, 0, 1, 1, 1]
    assert fit_length(ids, mask, 3) == ([1, 2, 3], [0, 0, 1], True)
    assert fit_length(ids, mask, 5) == (ids, mask, False)
    assert fit_length(ids, mask, 99) == (ids, mask, False)
    with pytest.raises(ValueError, match="positive"):
        fit_length(ids, mask, 0)
    with pytest.raises(ValueError, match="same length"):
        fit_length(ids, mask[:-1], 3)
