"""What an artifact's identity is made of: the code that builds it and the model weights it reads.

- `code_identity(module)`: a hash over the module's source and the source of
  every project module it imports, transitively (imports inside functions
  included; importing a registry package, one that scans itself with
  pkgutil, includes all its modules). Sources are hashed as
  their AST without docstrings, so comments, formatting and docs can change
  without recomputing anything, and any change of code does recompute.
- `weights_digest(folder)`: a sha256 over the content of a model folder's
  weight, config and tokenizer files, cached by (path, size, mtime) so it is
  computed once per file version, not every run.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
from pathlib import Path

from bidsml.filehash import file_digest_cached

# Top-level packages whose code shapes artifacts (flows/ and deployments/ only orchestrate).
PROJECT_PACKAGES = ("bidsml", "storage")  # tasks/ count through their build functions (function_identity)
# Modules of tasks/ that are not steps but code steps build with: a step importing one counts its whole code.
SHARED_STEP_MODULES = ("tasks.adapters",)


# Functions whose imports only validate names against registries: they shape no artifact, so the code
# they import is not part of the importer's identity (else adding a benchmark would recompute features).
VALIDATION_ONLY = {
    "bidsml.config": {"_registered", "_options_valid", "_selector_inputs_exist"},
    "bidsml.selectors.oracle": {"_check"},
}


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT_PACKAGES or name in SHARED_STEP_MODULES


# The folder holding the project's top-level packages (this file is <root>/storage/identity.py). Project modules
# are found from here, never through sys.path: a `dask worker` puts its scratch folder first on sys.path, and
# Dask's spill folder there is named `storage`; any folder named like a project package in the working directory
# would shadow the project the same way, and the code identity would silently change.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def _spec_origin(name: str) -> tuple[str | None, bool]:
    """Returns (source file, is_package) of a project module, or (None, False) when it is not one.

    Resolved from `PROJECT_ROOT` on the file system: nothing is imported and
    neither sys.path nor the working directory can change the answer.
    """
    top, *rest = name.split(".")
    if top not in PROJECT_PACKAGES and name not in SHARED_STEP_MODULES:
        return None, False
    path = PROJECT_ROOT.joinpath(top, *rest)
    if (path / "__init__.py").is_file():
        return str(path / "__init__.py"), True
    if rest and path.with_suffix(".py").is_file():
        return str(path.with_suffix(".py")), False
    return None, False


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def _package_modules(name: str, origin: str) -> list[str]:
    folder = Path(origin).parent
    return sorted(f"{name}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


def _from_module(node: ast.ImportFrom, importer: str, is_pkg: bool) -> str:
    """Returns the absolute module a `from ... import` statement of module `importer` reads from."""
    if not node.level:
        return node.module or ""
    base = importer if is_pkg else importer.rsplit(".", 1)[0]  # relative import
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    return f"{base}.{node.module}" if node.module else base


def project_imports(name: str) -> tuple[tuple[str, ...], str]:
    """Returns (project modules `name` imports, the canonical dump of its code) without importing it.

    Parsed once per version of the file (its size and mtime): every step's identity reads the same modules.
    """
    origin, is_pkg = _spec_origin(name)
    if origin is None:
        raise ImportError(f"no Python source for module {name!r}")
    st = os.stat(origin)
    return _parsed_imports(name, origin, is_pkg, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _parsed_imports(name: str, origin: str, is_pkg: bool, size: int, mtime_ns: int) -> tuple[tuple[str, ...], str]:
    tree = _strip_docstrings(ast.parse(Path(origin).read_text(), filename=origin))
    found: set[str] = set()
    skip = VALIDATION_ONLY.get(name, set())
    skipped = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in skip for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _is_project(a.name)}
        elif isinstance(node, ast.ImportFrom):
            mod = _from_module(node, name, is_pkg)
            if not _is_project(mod):
                continue
            found.add(mod)
            for a in node.names:  # `from pkg import submodule`
                if _spec_origin(f"{mod}.{a.name}")[0] is not None:
                    found.add(f"{mod}.{a.name}")
    if is_pkg and any(isinstance(n, ast.Import) and any(a.name == "pkgutil" for a in n.names) for n in ast.walk(tree)):
        found |= set(_package_modules(name, origin))  # a registry package: it imports every module it holds
    # a submodule's package __init__ runs first
    for mod in list(found):
        parts = mod.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return tuple(sorted(m for m in found if m != name and _spec_origin(m)[0] is not None)), ast.dump(tree)


@functools.lru_cache(maxsize=None)
def code_closure(name: str) -> tuple[str, ...]:
    """Returns the module `name` and every project module it imports, transitively (sorted)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(project_imports(mod)[0])
    return tuple(sorted(seen))


def code_identity(name: str) -> str:
    """Returns a hash of the code of module `name` and of every project module it imports (transitively)."""
    h = hashlib.sha256()
    for mod in code_closure(name):
        h.update(mod.encode() + b"\0" + project_imports(mod)[1].encode() + b"\0")
    return h.hexdigest()[:16]


# --- model weights -----------------------------------------------------------------------------

# Files whose content defines a model folder (weights, architecture, tokenizer, chat template).
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.json", "*.model", "*.txt", "*.jinja")
NOT_CONTENT = {"bidsflow_source.json"}  # where a converted folder came from (a path): not the model


def weights_digest(folder: Path, cache_file: Path) -> str:
    """Returns a sha256 over the names and contents of a model folder's defining files."""
    folder = Path(folder)
    files = sorted(
        {p for pat in MODEL_FILE_PATTERNS for p in folder.glob(pat) if p.is_file() and p.name not in NOT_CONTENT}
    )
    if not files:
        raise FileNotFoundError(f"model folder {folder} has no weight, config or tokenizer files")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + file_digest_cached(f, cache_file).encode() + b"\0")
    return h.hexdigest()


def model_identity(model) -> dict:
    """Returns what identifies a recipe's model section: its files' content (weights, config, tokenizer) and the
    settings that shape it. Not the folder's path: the same weights elsewhere are the same model."""
    from bidsml.model import model_dir, model_source_config
    from bidsml.model_sources import DEFAULT_CACHE, digest_cache

    return {
        "files": weights_digest(model_dir(model), digest_cache(DEFAULT_CACHE)),
        **model_source_config(model),
        "max_seq_length": model.max_seq_length,
        "dtype": model.dtype,
    }


# --- a function's code ---------------------------------------------------------------------------


def _top_level_names(tree: ast.Module) -> dict[str, list[ast.AST]]:
    """Returns {name a module's top level binds: the statements that bind it} (defs, assignments, imports)."""
    out: dict[str, list[ast.AST]] = {}
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        for name in names:
            out.setdefault(name, []).append(node)
    return out


def _imported_modules(node: ast.AST, module: str, is_pkg: bool, only: set[str] | None = None) -> set[str]:
    """Returns the project modules an import statement brings in (restricted to the names in `only`)."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for a in node.names:
            if _is_project(a.name) and (only is None or (a.asname or a.name).split(".")[0] in only):
                out.add(a.name)
    elif isinstance(node, ast.ImportFrom):
        mod = _from_module(node, module, is_pkg)
        if not _is_project(mod):
            return out
        for a in node.names:
            if only is not None and (a.asname or a.name) not in only:
                continue
            sub = f"{mod}.{a.name}"
            out.add(sub if _spec_origin(sub)[0] is not None else mod)
    return {m for m in out if _spec_origin(m)[0] is not None}


def _function_parts(module: str, names: tuple[str, ...]) -> tuple[list[ast.AST], set[str]]:
    """Returns (the module's top-level statements functions `names` use, transitively; project modules they import)."""
    path = PROJECT_ROOT.joinpath(*module.split("."))
    is_pkg = (path / "__init__.py").is_file()
    origin = path / "__init__.py" if is_pkg else path.with_suffix(".py")
    if not origin.is_file():
        raise ImportError(f"no Python source for module {module!r} under {PROJECT_ROOT}")
    tree = _strip_docstrings(ast.parse(origin.read_text(), filename=str(origin)))
    defs = _top_level_names(tree)
    missing = [n for n in names if n not in defs]
    if missing:
        raise ValueError(f"{module} defines no {', '.join(missing)}")
    seen_nodes: dict[int, ast.AST] = {}
    modules: set[str] = set()
    todo = list(names)
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done or name not in defs:
            continue
        done.add(name)
        for node in defs[name]:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules |= _imported_modules(node, module, is_pkg, {name})
                continue
            seen_nodes[id(node)] = node
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name):
                    todo.append(sub.id)
                elif isinstance(sub, (ast.Import, ast.ImportFrom)):  # imports inside a function
                    modules |= _imported_modules(sub, module, is_pkg)
    return sorted(seen_nodes.values(), key=lambda n: n.lineno), modules


def function_closure(module: str, *names: str) -> list[str]:
    """Returns every project module functions `names` of `module` run (the modules their identity covers)."""
    return sorted({m for mod in _function_parts(module, names)[1] for m in code_closure(mod)})


def function_identity(module: str, *names: str) -> str:
    """Returns a hash of the code of functions `names` of `module`: what they run, and nothing else of the module.

    Starting from the functions, every top-level definition, constant and
    import of the module that they use (transitively) is part of it, and each
    project module they import counts with its whole closure (`code_identity`).
    The rest of the module (a step's declaration: its description, its
    resources) is not: editing it recomputes nothing.
    """
    nodes, modules = _function_parts(module, names)
    h = hashlib.sha256()
    for node in nodes:
        h.update(ast.dump(node).encode() + b"\0")
    for mod in sorted(modules):
        h.update(mod.encode() + b"\0" + code_identity(mod).encode() + b"\0")
    return h.hexdigest()[:16]
