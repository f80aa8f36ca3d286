"""Linear probes of the stored layers, trained from the store alone."""

from featurestore import FeatureStore
from train_side.config import DataConfig, OptimConfig
from train_side.data import plan, read_batch, split_examples
from train_side.network.loss import next_token_loss
from train_side.network.model import FrozenHead
from train_side.training.probe import probe_layers, write_table


def test_untrained_probe_of_the_final_state_is_the_backbones_own_head(tiny_store):
    store = FeatureStore.open(tiny_store)
    [result] = probe_layers(store, [4], DataConfig(epochs=1, token_budget=256), OptimConfig(),  # lens: before training
                            device="cpu", progress=False)
    head = FrozenHead(*store.head())
    _, val = split_examples(store.n_examples, 0.05, 0)
    losses = [(next_token_loss(b.hidden[4], b.input_ids, b.loss_mask, head).item(), int(b.loss_mask[:, 1:].sum()))
              for b in (read_batch(store, i, [4]) for i in plan(store, val, 256))]
    expected = sum(l * n for l, n in losses) / sum(n for _, n in losses)
    assert abs(result.lens_loss - expected) < 1e-3


def test_probes_learn_what_each_layer_holds(tiny_store, tmp_path):
    store = FeatureStore.open(tiny_store)
    results = probe_layers(store, None, DataConfig(epochs=8, token_budget=256), OptimConfig(lr=3e-2),
                           device="cpu", progress=False)
    assert [r.layer for r in results] == [0, 1, 2, 3, 4]
    assert all(r.probe_loss < 0.5 * r.lens_loss for r in results)  # the next token is a linear read of h_k
    assert results[0].probe_loss < results[-1].probe_loss  # h_0 is the least noisy state of the tiny store
    table = write_table(results, tmp_path)
    assert table.count("\n") == 6 and (tmp_path / "probe.json").exists()
