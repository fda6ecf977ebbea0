"""The import rules of docs/architecture.md, checked on the source: layers point down, no cycles, and the
kernel imports only torch, NumPy, safetensors and the standard library.

Every import counts, function-level ones included; only ``if TYPE_CHECKING:`` blocks (annotations,
never executed) are skipped.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the import name it is installed under (pyproject.toml's package-dir).
PACKAGES = {
    "latent_residual": "latent_residual",
    "plugins": "latent_residual_plugins",
    "integrations": "latent_residual_integrations",
}

KERNEL = {
    f"latent_residual.{name}"
    for name in (
        "version",
        "errors",
        "config",
        "contract",
        "distributions",
        "encodings",
        "nets",
        "rollout",
        "residual",
        "adapters",
        "serialization",
        "checkpoints",
        "progress",
        "fitting",
        "actor_critic",
        "observations",
        "losses",
    )
}
RUNTIME = {"latent_residual.onnx_policy"}
REGISTRY = {"latent_residual.registry"} | {
    f"latent_residual.registry.{name}" for name in ("hookspecs", "specs", "plugins", "lookup")
}

# Layer -> the layers it may import. The package root is the public API: only plugins,
# integrations and the outside world import it.
ALLOWED = {
    "kernel": {"kernel"},
    "runtime": set(),
    "registry": {"kernel", "registry"},
    "workflow": {"kernel", "runtime", "registry", "workflow"},
    "api": {"kernel", "runtime", "registry", "workflow"},
    "plugin": {"api", "kernel", "runtime", "registry", "workflow"},
    "integration": {"api", "kernel", "runtime", "registry", "workflow", "plugin"},
}
# Layer -> third-party packages it may import (None: any).
THIRD_PARTY = {
    "kernel": {"torch", "numpy", "safetensors"},
    "runtime": {"numpy", "onnxruntime"},
    "registry": {"pluggy", "gymnasium"},
}


def layer(module: str) -> str:
    if module in KERNEL:
        return "kernel"
    if module in RUNTIME:
        return "runtime"
    if module in REGISTRY:
        return "registry"
    if module.startswith("latent_residual.workflow"):
        return "workflow"
    if module in ("latent_residual", "latent_residual.testing"):
        return "api"
    if module.startswith("latent_residual_plugins"):
        return "plugin"
    if module.startswith("latent_residual_integrations"):
        return "integration"
    raise AssertionError(
        f"{module} belongs to no layer; add it to one in tests/test_layers.py and docs/architecture.md"
    )


def project_sources() -> dict[str, str]:
    """Module name -> source, for every module of the three installed packages."""
    sources = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "pretrained" in path.parts:
                continue
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports(module: str, source: str, known: set[str]) -> list[str]:
    """The modules ``module`` imports, resolved: ``from a import b`` is ``a.b`` when that is a module."""
    tree = ast.parse(source)
    skipped = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: len(module.split(".")) - node.level + (module in _packages(known))]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append(target if target in known else base)
    return found


def _packages(known: set[str]) -> set[str]:
    return {name for name in known if any(other.startswith(name + ".") for other in known)}


def _internal(target: str, known: set[str]) -> str | None:
    """The project module ``target`` names (itself, or the package it is inside), if any."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def violations(sources: dict[str, str]) -> list[str]:
    """Every import that breaks a layer rule, as 'importer -> imported: why'."""
    known = set(sources)
    problems = []
    for module, source in sorted(sources.items()):
        own = layer(module)
        for target in imports(module, source, known):
            internal = _internal(target, known)
            if internal is not None:
                other = layer(internal)
                same_plugin = own == other == "plugin" and internal.split(".")[:2] == module.split(".")[:2]
                if other not in ALLOWED[own] and not same_plugin and not (own == other and own != "plugin"):
                    problems.append(f"{module} -> {internal}: the {own} layer may not import the {other} layer")
                continue
            top = target.split(".")[0]
            if own in THIRD_PARTY and top not in sys.stdlib_module_names and top not in THIRD_PARTY[own]:
                problems.append(
                    f"{module} -> {target}: the {own} layer imports only {sorted(THIRD_PARTY[own])} "
                    "and the standard library"
                )
    return problems


def cycles(sources: dict[str, str]) -> list[list[str]]:
    """Import cycles among project modules (a package importing its own submodule does not count)."""
    known = set(sources)
    graph = {module: set() for module in sources}
    for module, source in sources.items():
        for target in imports(module, source, known):
            internal = _internal(target, known)
            if internal is not None and internal != module and not internal.startswith(module + "."):
                graph[module].add(internal)
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_respects_the_layers():
    assert violations(project_sources()) == []


def test_there_is_no_import_cycle():
    # The package root loads plugins, whose registration modules import it back by name only
    # through entry points; what counts here is what the import statements say.
    assert [" -> ".join(cycle) for cycle in cycles(project_sources())] == []


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        (
            {
                "latent_residual.fitting": "from latent_residual.workflow.data.datasets import load_dataset\n",
                "latent_residual.workflow.data.datasets": "",
            },
            (
                "latent_residual.fitting -> latent_residual.workflow.data.datasets: "
                "the kernel layer may not import the workflow layer"
            ),
        ),
        (
            {"latent_residual.rollout": "def f():\n    import gymnasium\n"},
            "latent_residual.rollout -> gymnasium: the kernel layer imports only",
        ),
        (
            {"latent_residual.nets": "import tqdm\n"},
            "latent_residual.nets -> tqdm",
        ),
        (
            {"latent_residual.adapters": "from latent_residual import __version__\n", "latent_residual": ""},
            "latent_residual.adapters -> latent_residual: the kernel layer may not import the api layer",
        ),
        (
            {"latent_residual.onnx_policy": "import torch\n"},
            "latent_residual.onnx_policy -> torch",
        ),
        (
            {
                "latent_residual_plugins.draw.model": "from latent_residual_plugins.dmc import env\n",
                "latent_residual_plugins.dmc.env": "",
            },
            (
                "latent_residual_plugins.draw.model -> latent_residual_plugins.dmc.env: "
                "the plugin layer may not import the plugin layer"
            ),
        ),
    ],
)
def test_the_rules_catch_a_broken_import(sources, expected):
    assert any(problem.startswith(expected) for problem in violations(sources)), violations(sources)


def test_a_cycle_is_found_and_named():
    sources = {
        "latent_residual.registry.plugins": "from latent_residual.registry import lookup as registry\n",
        "latent_residual.registry.lookup": "from latent_residual.registry.plugins import load_plugins\n",
    }
    assert cycles(sources) == [
        ["latent_residual.registry.lookup", "latent_residual.registry.plugins", "latent_residual.registry.lookup"]
    ]


def _code_strings(source: str) -> list[tuple[int, str]]:
    """String literals that are not docstrings, and names, with their line numbers."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and ast.get_docstring(node) is not None
        ):
            docstrings.add(node.body[0].lineno)
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.STRING, tokenize.NAME) and token.start[0] not in docstrings:
            found.append((token.start[0], token.string))
    return found


def test_the_core_names_no_backbone_or_environment(registry):
    """Backbone and environment ids, and the names inside them, appear in the core only in docstrings."""
    import latent_residual as lr

    ids = {spec.id for spec in [*lr.list_backbones(), *lr.list_envs()]}
    names = {spec.name for spec in lr.list_backbones()} | {spec.namespace for spec in lr.list_envs()}
    pattern = re.compile("|".join(rf"(?<![\w-]){re.escape(word)}(?![\w-])" for word in sorted(ids | names)))
    hits = [
        f"{module}:{line}: {text}"
        for module, source in project_sources().items()
        if layer(module) in ("kernel", "runtime", "registry", "workflow", "api")
        for line, text in _code_strings(source)
        if pattern.search(text)
    ]
    assert hits == []
