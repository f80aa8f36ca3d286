import numpy as np
import pytest

from featurestore import FeatureStore
from train_side.config import DataConfig
from train_side.data import epoch_order, epochs_from, plan, read_ahead, read_batch, split_examples, steps_of


@pytest.fixture(scope="module")
def store(tiny_store):
    return FeatureStore.open(tiny_store)


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_examples(100, 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 100
    assert np.array_equal(val, split_examples(100, 0.1, seed=3)[1])
    assert not np.array_equal(val, split_examples(100, 0.1, seed=4)[1])
    assert len(split_examples(100, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="too small"):
        split_examples(1, 0.5, seed=0)


def test_batches_are_consecutive_runs_within_the_budget(store):
    train, _ = split_examples(store.n_examples, 0.1, seed=0)
    batches = plan(store, train, token_budget=64)
    assert np.array_equal(np.concatenate(batches), train)
    for batch in batches:
        assert len(batch) == 1 or len(batch) * store.lengths[batch].max() <= 64


def test_read_batch_pads_right_and_matches_the_store(store):
    indices = np.array([3, 4, 6])
    batch = read_batch(store, indices, layers=[0, 4])
    assert set(batch.hidden) == {0, 4} and batch.n_tokens == store.lengths[indices].sum()
    for row, i in enumerate(indices):
        example, n = store.example(i, layers=[4]), store.lengths[i]
        assert np.array_equal(batch.input_ids[row, :n].numpy(), example.input_ids)
        assert np.array_equal(batch.loss_mask[row, :n].numpy(), example.loss_mask.astype(bool))
        assert np.array_equal(batch.hidden[4][row, :n].numpy(), example.hidden[4])
        assert not batch.loss_mask[row, n:].any() and not batch.hidden[4][row, n:].any()


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert np.array_equal(epoch_order(10, 0, 1), epoch_order(10, 0, 1))
    assert not np.array_equal(epoch_order(10, 0, 1), epoch_order(10, 0, 2))
    assert sorted(epoch_order(10, 5, 0)) == list(range(10))


def test_epochs_from_cuts_the_last_epoch_at_max_steps_and_resumes_mid_epoch():
    whole = [(e, list(o)) for e, o in epochs_from(4, DataConfig(epochs=2))]
    assert whole == [(0, list(epoch_order(4, 0, 0))), (1, list(epoch_order(4, 0, 1)))]
    cut = [(e, list(o)) for e, o in epochs_from(4, DataConfig(epochs=1, max_steps=10))]  # max_steps overrides
    assert [e for e, _ in cut] == [0, 1, 2] and cut[2][1] == list(epoch_order(4, 0, 2))[:2]
    resumed = [(e, list(o)) for e, o in epochs_from(4, DataConfig(max_steps=10), start=5)]
    assert resumed == [(1, list(epoch_order(4, 0, 1))[1:]), cut[2]]


def test_read_ahead_yields_in_order_stops_early_and_reraises(store):
    batches = [np.array([i]) for i in range(8)]
    seen = [int(b.input_ids[0, 0]) for b in read_ahead(store, batches, [0], depth=2)]
    assert seen == [int(store.example(i).input_ids[0]) for i in range(8)]
    for _ in zip(range(2), read_ahead(store, batches, [0], depth=1)):  # abandoned early: must not hang
        pass
    with pytest.raises(IndexError):
        list(read_ahead(store, [np.array([0]), np.array([10_000])], [0]))


def test_a_step_is_a_run_of_consecutive_batches_the_last_shorter():
    batches = [np.arange(i, i + 2) for i in range(0, 10, 2)]
    steps = steps_of(batches, 2)
    assert [[b.tolist() for b in step] for step in steps] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9]]]
    assert steps_of(batches, 1) == [[b] for b in batches]
