import numpy as np
import pytest

from extract.tasks.examples import make_example
from extract.plan import PlanError, parse_layers, tokenize
from featurestore.layout import plan_batches


def test_layer_specs():
    assert parse_layers("all", 4) == (0, 1, 2, 3, 4)
    assert parse_layers("0,4,2", 4) == (0, 2, 4)
    assert parse_layers("every:2", 5) == (0, 2, 4, 5)  # the final state is always kept
    assert parse_layers("top:2", 30) == (28, 29, 30)  # what xLadder(2) reads
    for bad in ("top:0", "every:x", "0,31", "-1", "first:2", ""):
        with pytest.raises(PlanError):
            parse_layers(bad, 30)


def test_batches_respect_the_token_budget_and_cover_every_example():
    lengths = np.array([3, 3, 4, 5, 9, 20, 21])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    batches = plan_batches(np.diff(offsets), token_budget=16)
    assert batches == [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
    assert all(max(lengths[a:b]) * (b - a) <= 16 or b - a == 1 for a, b in batches)


@pytest.mark.slow
def test_tokenize_sorts_by_length_and_counts_long_examples(smollm2_tokenizer):
    examples = [make_example("q " * n, "a " * n + "\n#### 1", i) for i, n in enumerate([30, 2, 10])]
    layout = tokenize(examples, smollm2_tokenizer, "plain", max_length=40, skip_long=False)
    assert [m["id"] for m in layout.meta] == [1, 2, 0]
    assert np.all(np.diff(np.diff(layout.tokens.offsets)) >= 0)
    assert layout.n_truncated == 1 and layout.n_skipped == 0
    skipped = tokenize(examples, smollm2_tokenizer, "plain", max_length=40, skip_long=True)
    assert skipped.n_skipped == 1 and [m["id"] for m in skipped.meta] == [1, 2]
    with pytest.raises(PlanError, match="raise it"):
        tokenize(examples[:1], smollm2_tokenizer, "plain", max_length=10, skip_long=False)  # prompt fills it
