"""Never unpickling (docs/reliability.md): the package's own source reads no file with a loader
that can run code. A static check over every module, so a new call site cannot slip in."""

from __future__ import annotations

import ast
from pathlib import Path

import genval

SOURCE = Path(genval.__file__).parent


def _calls() -> list[tuple[str, ast.Call]]:
    """Every call in the package, with the module it is in."""
    out = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        out += [(str(path.relative_to(SOURCE)), node) for node in ast.walk(tree)
                if isinstance(node, ast.Call)]
    return out


def _name(call: ast.Call) -> str:
    """``np.load``, ``pickle.loads``, ``eval``: the dotted name called, or ''."""
    parts = []
    node = call.func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_loader_that_runs_code():
    forbidden = {"pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads",
                 "torch.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec",
                 "marshal.loads", "shelve.open", "dill.load", "dill.loads"}
    found = [f"{module}:{call.lineno} {_name(call)}" for module, call in _calls()
             if _name(call) in forbidden]
    assert found == []


def test_every_np_load_refuses_pickles():
    loads = [(m, c) for m, c in _calls() if _name(c) in ("np.load", "numpy.load")]
    assert loads  # the check looks at something
    unsafe = [f"{m}:{c.lineno}" for m, c in loads
              if not (isinstance(_keyword(c, "allow_pickle"), ast.Constant)
                      and _keyword(c, "allow_pickle").value is False)]
    assert unsafe == []


def test_every_yaml_load_is_safe():
    from genval.config import _UniqueKeyLoader

    assert issubclass(_UniqueKeyLoader, __import__("yaml").SafeLoader)
    loads = [(m, c) for m, c in _calls() if _name(c) == "yaml.load"]
    unsafe = [f"{m}:{c.lineno}" for m, c in loads
              if not (isinstance(_keyword(c, "Loader"), ast.Name)
                      and _keyword(c, "Loader").id == "_UniqueKeyLoader")]
    assert unsafe == []
