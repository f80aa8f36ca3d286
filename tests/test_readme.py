"""Every Python block of README.md runs as written, on a tiny model's store and run: the only
changes are the paths in PATHS, each a quoted string of the README mapped to its tiny stand-in."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def paths(tiny_llama, tmp_path_factory) -> dict[str, str]:
    """README path (quoted) -> the tiny stand-in (quoted): a store of 200 examples (the README reads
    examples 100-163) and a run trained from it."""
    from extract.run import extract
    from train_side.config import DataConfig
    from train_side.training.train import train

    root = tmp_path_factory.mktemp("readme")
    store = extract(str(tiny_llama), limit=200, root=root / "stores", progress=False).store
    train(store, root / "ladder", side={"side_width": 16, "n_heads": 2}, data=DataConfig(max_steps=2), progress=False)
    return {'"runs/ladder"': repr(str(root / "ladder")), '"stores/....zarr"': repr(str(store))}


def test_the_readme_has_python_blocks_and_each_path_is_mapped():
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert {m for block in blocks for m in re.findall(r'"(?:runs|stores)/[^"]*"', block)} <= \
        {'"runs/ladder"', '"stores/....zarr"', '"runs/ladder-copy"'}  # the copy is written, under the cwd


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_a_readme_python_block_runs_as_written(index, paths, tiny_llama, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    block = python_blocks()[index]
    for readme_path, stand_in in paths.items():
        block = block.replace(readme_path, stand_in)
    monkeypatch.chdir(tmp_path)  # what a block writes stays in the test's directory
    exec(compile(block, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    special = AutoTokenizer.from_pretrained(tiny_llama).all_special_tokens
    assert not [token for token in special if token in printed]  # text as it reads: no <|im_end|> or <eos>
