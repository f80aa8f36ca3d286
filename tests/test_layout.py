"""The package layout's rules (README, Layout): no import cycles, featurestore free of torch and
of the stages, no stage importing another stage's command or loop code (extract none of
train_side), and train_side's rooms in their one direction."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "extract", "train_side")
STAGE_CODE = {"extract": ("extract.cli", "extract.run", "extract.loop", "extract.plan", "extract.distributed"),
              "train_side": ("train_side.cli", "train_side.training", "train_side.inference.evaluate")}
# train_side's rooms and what each may import of train_side: the network imports no other room;
# training and inference import the network and the neutral top-level modules (config, checkpoint,
# data, devices: what both use), never each other; only cli imports cli.
ROOMS = ("network", "training", "inference")
MAY_IMPORT = {"network": {"network"}, "neutral": {"network", "neutral"}, "training": {"network", "neutral", "training"},
              "inference": {"network", "neutral", "inference"}, "cli": {"network", "neutral", "training", "inference"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (top level or inside functions), relative imports resolved."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import x` imports module x
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles():
    edges, state = graph(), {}

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open" and not module.startswith(target + "."):  # a package's own __init__
                raise AssertionError(f"import cycle: {' -> '.join([*stack, module, target])}")
            if target not in state:
                visit(target, [*stack, module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_featurestore_needs_neither_torch_nor_the_stages():
    for path in (REPO / "featurestore").rglob("*.py"):
        bad = {m for m in imports(path) if m.split(".")[0] in ("torch", "transformers", "extract", "train_side")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_no_stage_imports_another_stages_command_or_loop():
    for stage, others in (("extract", STAGE_CODE["train_side"]), ("train_side", STAGE_CODE["extract"])):
        for path in (REPO / stage).rglob("*.py"):
            bad = {m for m in imports(path) if m.startswith(others)}
            assert not bad, f"{stage}/{path.name} imports {sorted(bad)}"


def test_extract_imports_nothing_of_train_side():
    for path in (REPO / "extract").rglob("*.py"):
        bad = {m for m in imports(path) if m.split(".")[0] == "train_side"}
        assert not bad, f"extract/{path.relative_to(REPO / 'extract')} imports {sorted(bad)}"


def room(module: str) -> str:
    """The room of a train_side module: network, training, inference, cli, or neutral (top level)."""
    parts = module.split(".")
    return parts[1] if parts[1] in ROOMS else "cli" if module == "train_side.cli" else "neutral"


def test_train_side_rooms_import_in_one_direction():
    for module, targets in graph().items():
        if not module.startswith("train_side."):
            continue
        for target in targets:
            if target.startswith("train_side.") and not module.startswith(target + "."):  # a package's own __init__
                assert room(target) in MAY_IMPORT[room(module)], f"{module} ({room(module)}) imports {target}"


def test_peft_is_only_the_comparisons_optional_extra():
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            assert not {m for m in imports(path) if m.split(".")[0] == "peft"}, f"{path.name} imports peft"
