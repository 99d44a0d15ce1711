"""The package's imports point one way: no import cycle between modules, no import against the
layer order, no private name imported from another module (read from the source with ast, so
function-level imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: What each part of the package may import directly (and, through them, everything below).
#: A module belongs to the longest name listed that is a prefix of its own. Read bottom-up:
#: io <- preprocess <- model <- predict <- segmentation <- evaluate / app, and data <- train.
DEPENDS: dict[str, tuple[str, ...]] = {
    "medsam3.errors": (),
    "medsam3.image": ("medsam3.errors",),
    "medsam3.palette": ("medsam3.errors",),
    "medsam3.orientation": ("medsam3.errors",),
    # the --precision/--fast options and precision names, without torch (the CLI's parser imports it)
    "medsam3.precision_options": ("medsam3.errors",),
    # the case loop with read-ahead that batch segmentation and model evaluation share
    "medsam3.runner": ("medsam3.errors",),
    "medsam3.io": ("medsam3.image", "medsam3.palette"),
    "medsam3.preprocess": ("medsam3.io",),
    "medsam3.overlay": ("medsam3.preprocess", "medsam3.orientation"),
    # the CLIP tokenizer is a leaf: the vocabulary counts prompt tokens with it
    "medsam3.model.tokenizer": ("medsam3.errors",),
    "medsam3.prompts": ("medsam3.model.tokenizer",),
    # how typed text maps onto a model's own prompts (convert writes a model's vocabulary)
    "medsam3.prompt_mapping": ("medsam3.prompts",),
    # --precision ov: the vision encoder converted to / run by OpenVINO (torch and openvino only)
    "medsam3.model.openvino_backend": ("medsam3.errors", "medsam3.precision_options"),
    "medsam3.model": ("medsam3.preprocess", "medsam3.prompt_mapping", "medsam3.precision_options",
                      "medsam3.model.openvino_backend"),
    # runner: a volume's slices are read ahead with the case loop's reader (predict.slice_feed)
    "medsam3.predict": ("medsam3.model", "medsam3.orientation", "medsam3.runner"),
    "medsam3.data": ("medsam3.prompts", "medsam3.overlay"),
    "medsam3.segmentation": ("medsam3.predict", "medsam3.overlay"),
    "medsam3.train": ("medsam3.data", "medsam3.predict"),
    "medsam3.evaluate": ("medsam3.segmentation", "medsam3.data", "medsam3.runner"),
    "medsam3.app": ("medsam3.segmentation",),
    "medsam3.batch": ("medsam3.segmentation", "medsam3.runner"),
    "medsam3.cli": ("medsam3.evaluate", "medsam3.app", "medsam3.train", "medsam3.batch"),
}
#: The root package (``__version__``, lazy public names) may be imported from anywhere; its own
#: eager imports are only these.
ROOT_IMPORTS = {"medsam3.errors", "medsam3.image"}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in (SOURCE / "medsam3").rglob("*.py"):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, int, list[str]]]:
    """``(imported module, line, names)`` for every ``medsam3`` import of ``module``, at any depth."""
    path, package = MODULES[module]
    here = module if package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(_resolve(a.name), node.lineno, []) for a in node.names if a.name.startswith("medsam3")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("medsam3"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # ``from package import module``
                    out.append((sub, node.lineno, []))
                else:
                    out.append((_resolve(base), node.lineno, [alias.name]))
    return [(target, line, names) for target, line, names in out if target and target != module]


GRAPH = {m: _imports(m) for m in MODULES}


def _unit(module: str) -> str | None:
    names = [u for u in DEPENDS if module == u or module.startswith(u + ".")]
    return max(names, key=len) if names else None


def _below(unit: str) -> set[str]:
    seen, todo = set(), list(DEPENDS[unit])
    while todo:
        u = todo.pop()
        if u not in seen:
            seen.add(u)
            todo += DEPENDS[u]
    return seen


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "medsam3" and _unit(m) is None] == []


def test_the_layer_table_itself_has_no_cycle():
    for unit in DEPENDS:
        assert unit not in _below(unit), unit


def against_layers(graph) -> list[str]:
    wrong = []
    for module, imports in graph.items():
        if module == "medsam3":
            wrong += [f"medsam3 -> {t} (line {line})" for t, line, _ in imports if t not in ROOT_IMPORTS]
            continue
        unit = _unit(module)
        allowed = _below(unit) | {unit}
        wrong += [f"{module} -> {target} (line {line})" for target, line, _ in imports
                  if target != "medsam3" and _unit(target) not in allowed]
    return wrong


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = {m: sorted({t for t, _, _ in imports}) for m, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    return found


def private_imports(graph) -> list[str]:
    return [f"{module} imports {name} from {target} (line {line})"
            for module, imports in graph.items() for target, line, names in imports
            for name in names if name.startswith("_") and not name.startswith("__")]


def test_no_import_against_the_layer_order():
    assert against_layers(GRAPH) == []


def test_no_import_cycle_between_modules():
    assert cycles(GRAPH) == []


def test_no_private_name_imported_from_another_module():
    assert private_imports(GRAPH) == []


def test_the_checks_see_imports_hidden_in_functions(tmp_path, monkeypatch):
    """A cycle, a wrong-way import and a private name imported inside a function are all found."""
    path, package = MODULES["medsam3.io.read"]
    copy = tmp_path / path.name
    copy.write_text(path.read_text() + "\n\ndef probe():\n    from medsam3.io.label_maps import read_label_map\n"
                    "    from medsam3.predict.image import ImagePredictor\n    from medsam3.io.dicom import _parse\n")
    monkeypatch.setitem(MODULES, "medsam3.io.read", (copy, package))
    graph = dict(GRAPH, **{"medsam3.io.read": _imports("medsam3.io.read")})
    assert any({"medsam3.io.read", "medsam3.io.label_maps"} <= set(c) for c in cycles(graph))
    assert any(w.startswith("medsam3.io.read -> medsam3.predict.image") for w in against_layers(graph))
    assert any("_parse from medsam3.io.dicom" in w for w in private_imports(graph))
