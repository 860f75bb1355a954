"""The package's layering, checked from the source: nothing imports upward and no import cycle,
counting imports inside functions too (a lazy import is still a dependency)."""

import ast
from pathlib import Path

import shrinkformer

ROOT = Path(shrinkformer.__file__).parent
LOWER = ("shrinkformer.pack", "shrinkformer.compress", "shrinkformer.inference", "shrinkformer.data",
         "shrinkformer.model", "shrinkformer.runtime")
UPPER = ("shrinkformer.train", "shrinkformer.workflow", "shrinkformer.huggingface", "shrinkformer.experiments",
         "shrinkformer.web", "shrinkformer.cli")


def module_name(path: Path) -> str:
    parts = ["shrinkformer", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the shrinkformer modules it imports (a package import counts as its __init__)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # "from .x import y" may name a submodule y
                    target = f"{base}.{alias.name}"
                    deps.add(target if target in modules else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_lower_layers_never_import_upper_ones():
    bad = [(m, d) for m, deps in imports().items() if m.startswith(LOWER) for d in deps if d.startswith(UPPER)]
    assert bad == []


# Above the lower layers, bottom to top: model files of other families, the adapters over every
# family (and loading.py, which picks one), the training loop, the compression workflow that runs
# on any adapter, the experiments built from it, and the command. Each tier imports only tiers below it.
TIERS = (("shrinkformer.huggingface",), ("shrinkformer.adapters", "shrinkformer.loading"), ("shrinkformer.train",),
         ("shrinkformer.workflow",), ("shrinkformer.experiments",), ("shrinkformer.web", "shrinkformer.cli"))


def test_each_tier_imports_only_the_tiers_below_it():
    graph = imports()
    bad = []
    for level, tier in enumerate(TIERS):
        above = tuple(p for t in TIERS[level + 1:] for p in t)
        bad += [(m, d) for m, deps in graph.items() if m.startswith(tier) for d in deps if d.startswith(above)]
    assert bad == []


def test_only_loading_and_the_adapters_ask_which_family_a_model_is():
    """Retraining, budgets, the pipeline, the sweep and the CLI hold an adapter: none of them
    imports a family's model code or branches on it."""
    families = ("shrinkformer.huggingface", "shrinkformer.adapters.huggingface", "shrinkformer.adapters.transformer")
    allowed = ("shrinkformer.loading", "shrinkformer.adapters", "shrinkformer.huggingface")
    graph = imports()
    # Training a baseline from a configuration makes one of our Transformers: no choice to branch on.
    graph["shrinkformer.train.loop"] -= {"shrinkformer.adapters.transformer"}
    bad = [(m, d) for m, deps in graph.items() if not m.startswith(allowed) for d in deps if d.startswith(families)]
    bad += [(p.name, "is_huggingface") for p in ROOT.rglob("*.py")
            if "is_huggingface" in p.read_text() and module_name(p) not in ("shrinkformer.loading",)
            and not module_name(p).startswith(("shrinkformer.huggingface", "shrinkformer.adapters"))]
    assert bad == []


def test_the_page_package_needs_only_the_runtime():
    """web/ writes pages from the torch-free runtime: it imports nothing of training or compression."""
    allowed = ("shrinkformer.web", "shrinkformer.runtime", "shrinkformer.errors")
    bad = [(m, d) for m, deps in imports().items() if m.startswith("shrinkformer.web") for d in deps
           if not d.startswith(allowed)]
    assert bad == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle reached by depth-first search. Edges from a package's __init__ to its own
    submodules are left out: re-exporting submodules is how packages work."""
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    cycles, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for dep in sorted(edges[node]):
            if dep in stack:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, stack + [dep])
        done.add(node)

    for name in sorted(edges):
        if name not in done:
            visit(name, [name])
    return cycles


def test_no_import_cycles():
    assert find_cycles(imports()) == []


def test_the_cycle_check_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "p": {"p.x"}, "p.x": set()}) == ["a -> b -> c -> a"]


RUNTIME_MAY_IMPORT = ("shrinkformer.runtime", "shrinkformer.errors", "shrinkformer.io", "shrinkformer.special_tokens",
                      "shrinkformer.pack.entropy", "shrinkformer.pack")


def test_the_runtime_imports_neither_torch_nor_the_layers_above_it():
    """shrinkformer.runtime runs where torch is not installed: it imports the ground (errors, io,
    special tokens, the Huffman decoder) and itself, never torch (at any depth of a function)."""
    bad = []
    for path in (ROOT / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [(path.name, n) for n in names if n.split(".")[0] in ("torch", "safetensors", "sacrebleu")]
    graph = imports()
    bad += [(m, d) for m, deps in graph.items() if m.startswith("shrinkformer.runtime")
            for d in deps if not d.startswith(RUNTIME_MAY_IMPORT)]
    assert bad == []
