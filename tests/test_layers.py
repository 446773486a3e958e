"""The package's layers (docs/design.md): a module imports only from its own layer or the ones below, the import
graph has no cycle, and no module grows past ~500 lines. Imports inside functions count too."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ibtpo"

LAYERS = [
    ("core", ["registry", "guard", "timeouts", "interrupts", "correct", "tree_stats", "tree", "answers", "lm", "layouts",
              "profiles", "progress", "watch", "plots", "resume_check", "tiny_models", "rollout.sampling", "rollout.steps",
              "rollout.static_forward", "training.lock", "training.metrics", "testbed.task", "testbed.model",
              "testbed.tokenizer", "methods.iib_lpo.core", "methods.iib_lpo.latent"]),
    ("algorithms", ["algos", "rewards", "reward_fns", "data", "testbed.chain", "testbed.pretrain", "extensions",
                    "rollout.node_store", "rollout.render", "rollout.metrics"]),
    ("rollout", ["rollout"]),
    ("methods", ["methods"]),
    ("run", ["config", "components", "catalog", "models", "evaluation", "probe", "prompt_fit", "tasks", "testbed.build",
             "training"]),
    ("drivers", ["training.run", "compare", "api", "cli", ""]),
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """The layer of the longest matching prefix in LAYERS."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".") or p == "") and len(p) > best:
                best, rank = len(p), i
    return rank


def _imports() -> dict[str, set[str]]:
    modules = {_module(f) for f in SRC.rglob("*.py")}
    graph = {}
    for f in SRC.rglob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("ibtpo"):
                base = node.module.removeprefix("ibtpo").lstrip(".")
                names = [base] + [f"{base}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.removeprefix("ibtpo").lstrip(".") for a in node.names if a.name.startswith("ibtpo")]
            deps |= {n for n in names if n in modules}
        graph[_module(f)] = deps - {_module(f)}
    return graph


GRAPH = _imports()


def test_every_module_has_a_layer():
    assert [m for m in GRAPH if _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    mine = _layer(module)
    upward = [f"{d} ({LAYERS[_layer(d)][0]})" for d in sorted(GRAPH[module]) if _layer(d) > mine]
    assert upward == [], f"{module or 'ibtpo'} ({LAYERS[mine][0]}) imports from a higher layer"


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in GRAPH[m]:
            if d in GRAPH and d != "" and not d.startswith(m + "."):  # a package importing its own submodules
                if state.get(d) == 1:
                    pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
                if d not in state:
                    visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_no_module_over_500_lines():
    long = {str(f.relative_to(SRC)): n for f in SRC.rglob("*.py") if (n := len(f.read_text().splitlines())) > 500}
    assert long == {}
