"""The code each DVC stage runs, as a fingerprint DVC can compare.

dvc.yaml cannot list the stage code as file deps: in a `textloop init` project it lives in
site-packages, not in the project. So the always-run `sources` stage writes one small JSON per
stage (textloop's version + the sha256 of every own module the stage can execute) and each stage
depends on its own file: an edit reruns exactly the stages that can execute the edited module,
and DVC reruns what is downstream of them. The same mechanism serves a repo checkout (editable
install) and an installed package; the hashes are of file contents, so they do not depend on
where the code is installed."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

OWN_PACKAGES = ("textloop", "tasks")
WIRING = "textloop.pipeline.stages"  # the module behind `textloop stage NAME`


def own_modules() -> dict[str, Path]:
    """Every module of textloop's own packages: dotted name -> source file (nothing imported
    beyond the top-level packages)."""
    out: dict[str, Path] = {}
    for pkg in OWN_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        for base in (spec.submodule_search_locations or []) if spec else []:
            for file in sorted(Path(base).rglob("*.py")):
                parts = (pkg, *file.relative_to(base).with_suffix("").parts)
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                out.setdefault(name, file)
    return out


def _owner(name: str, modules: dict[str, Path]) -> list[str]:
    """The own module `name` refers to and the packages above it (their __init__ runs too)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules]


def imported(nodes: Iterable[ast.AST], module: str, modules: dict[str, Path]) -> set[str]:
    """Own modules imported anywhere inside `nodes` (module level or inside functions)."""
    package = module if modules.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                names = [alias.name for alias in sub.names]
            elif isinstance(sub, ast.ImportFrom):
                base = importlib.util.resolve_name("." * sub.level + (sub.module or ""), package) \
                    if sub.level else sub.module or ""
                names = [f"{base}.{alias.name}" for alias in sub.names]
            else:
                continue
            for name in names:
                found.update(_owner(name, modules))
    return found


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _scope_nodes(node: ast.AST) -> list[ast.AST]:
    """The nodes of one function's own scope: its body, not the bodies of functions nested in
    it (their decorators and default values are evaluated here, so they count)."""
    out: list[ast.AST] = []
    todo = list(ast.iter_child_nodes(node))
    while todo:
        sub = todo.pop()
        out.append(sub)
        if isinstance(sub, _SCOPES):
            todo.extend([*getattr(sub, "decorator_list", []), *sub.args.defaults,
                         *[d for d in sub.args.kw_defaults if d is not None]])
        else:
            todo.extend(ast.iter_child_nodes(sub))
    return out


def _bound(node: ast.AST, nodes: list[ast.AST]) -> set[str]:
    """Names a function binds in its own scope (parameters, assignments, imports, nested
    functions), less those it declares global: a read of such a name is the local, not the
    module-level function of that name."""
    args = node.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs,
                             *([args.vararg] if args.vararg else []),
                             *([args.kwarg] if args.kwarg else [])]}
    for sub in nodes:
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store | ast.Del):
            names.add(sub.id)
        elif isinstance(sub, ast.alias):
            names.add((sub.asname or sub.name).split(".")[0])
        elif isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(sub.name)
    return names - {n for sub in nodes if isinstance(sub, ast.Global) for n in sub.names}


def free_names(node: ast.AST, outer: frozenset[str] = frozenset()) -> set[str]:
    """Names a function reads that are not its own locals (nor those of the functions around
    it): the module-level names it can call. A local that happens to share a module function's
    name (`clean = pd.read_parquet(...)` inside `label`) is not a call of that function."""
    nodes = _scope_nodes(node)
    bound = outer | _bound(node, nodes)
    found = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
             and n.id not in bound}
    for sub in nodes:
        if isinstance(sub, _SCOPES):
            found |= free_names(sub, frozenset(bound))
    return found


def _wiring_functions(stage: str, tree: ast.Module) -> list[ast.FunctionDef]:
    """The stage's function in WIRING and the module helpers it calls. (The dispatcher that
    checks the stage name is left out: it computes nothing the outputs depend on.)"""
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    picked: dict[str, ast.FunctionDef] = {}
    todo = [stage]
    while todo:
        name = todo.pop()
        if name in picked or name not in funcs:
            continue
        picked[name] = funcs[name]
        todo.extend(n for n in free_names(funcs[name]) if n in funcs)
    return list(picked.values())


def stage_modules(stage: str, modules: dict[str, Path] | None = None,
                  graph: dict[str, set[str]] | None = None) -> set[str]:
    """Every own module `textloop stage STAGE` can execute: the wiring module, the imports of
    its module level and of the stage's own functions there, and everything those import,
    transitively (lazy imports inside functions included: they may run). `graph` (module ->
    own modules it imports) is filled as modules are parsed: pass one dict for all stages of a
    run so each module is parsed once (the always-run sources stage does this every run)."""
    modules = modules if modules is not None else own_modules()
    graph = graph if graph is not None else {}
    tree = ast.parse(modules[WIRING].read_bytes())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    todo = list(imported([*top, *_wiring_functions(stage, tree)], WIRING, modules))
    seen = set(_owner(WIRING, modules))  # WIRING as a whole would pull in every stage
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in graph:
            graph[name] = imported([ast.parse(modules[name].read_bytes())], name, modules)
        todo.extend(graph[name])
    return seen


def textloop_version() -> str:
    """The installed distribution's version ('unknown' when run from a bare source tree)."""
    try:
        return version("textloop")
    except PackageNotFoundError:
        return "unknown"


def stage_fingerprint(stage: str, modules: dict[str, Path] | None = None,
                      graph: dict[str, set[str]] | None = None,
                      digests: dict[str, str] | None = None) -> dict[str, object]:
    """{textloop: version, stage, modules: {dotted name: sha256 of the source file}}.
    `graph` and `digests` are caches shared by the stages of one call (see stage_modules)."""
    modules = modules if modules is not None else own_modules()
    digests = digests if digests is not None else {}
    names = sorted(stage_modules(stage, modules, graph))
    for n in names:
        if n not in digests:
            digests[n] = hashlib.sha256(modules[n].read_bytes()).hexdigest()
    return {"textloop": textloop_version(), "stage": stage,
            "modules": {n: digests[n] for n in names}}


def write_fingerprints(folder: Path, stages: Iterable[str]) -> list[Path]:
    """`folder/STAGE.json` for each stage (the file that stage lists as a dvc.yaml dep)."""
    modules, graph, digests = own_modules(), {}, {}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in stages:
        path = folder / f"{stage}.json"
        path.write_text(json.dumps(stage_fingerprint(stage, modules, graph, digests), indent=2,
                                   sort_keys=True))
        written.append(path)
    return written


def add_user_code(stage_file: Path, files: dict[str, Path]) -> None:
    """Add user code a stage runs (e.g. label.functions, a module in the project) to that stage's
    fingerprint file: {name: sha256, or "missing"}, so editing it reruns the stage."""
    data = json.loads(stage_file.read_text(encoding="utf-8"))
    data["user_code"] = {name: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                         else "missing" for name, path in files.items()}
    stage_file.write_text(json.dumps(data, indent=2, sort_keys=True))
