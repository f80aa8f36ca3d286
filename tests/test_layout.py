"""The package layout's rules (README, Layout): no import cycles, featurestore free of torch and
of the stages, and no stage importing another stage's command or loop code."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "extract", "train_side")
STAGE_CODE = {"extract": ("extract.cli", "extract.run", "extract.loop", "extract.plan", "extract.distributed"),
              "train_side": ("train_side.cli", "train_side.train", "train_side.sweep", "train_side.evaluate")}


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


def test_peft_is_only_the_comparisons_optional_extra():
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            assert not {m for m in imports(path) if m.split(".")[0] == "peft"}, f"{path.name} imports peft"
