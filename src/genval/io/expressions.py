"""Selections and aliases: a small, safe expression language over named columns.

``data.selection`` (a cut such as ``pt > 20 and abs(eta) < 2.4``) and ``data.aliases``
(derived columns such as ``pt_gev: pt / 1000``) are written in one grammar, evaluated the
same way for every file format. Nothing is handed to Python's ``eval``: the text is parsed
into Python's syntax tree, every node is checked against the grammar below, and the tree is
walked with numpy.

Grammar::

    expr     := expr OR expr | expr AND expr | NOT expr | comparison
    comparison := sum (CMP sum)*          CMP: <  <=  >  >=  ==  !=   (chains: 0 < x < 1)
    sum      := sum (+ | -) term | term
    term     := term (* | / | %) factor | factor
    factor   := (- | + | ~) factor | power
    power    := atom ** factor
    atom     := NUMBER | NAME | FUNCTION "(" expr ("," expr)* ")" | "(" expr ")"

* ``OR`` is ``or``, ``|`` or ``||``; ``AND`` is ``and``, ``&`` or ``&&``; ``NOT`` is ``not``,
  ``~`` or ``!`` (the C++ spellings of ROOT's ``TTree::Draw`` are accepted). ``and``/``or``/
  ``not`` treat any non-zero value as true; ``&``, ``|``, ``~`` act on booleans (a comparison)
  or integers, bit by bit, as in numpy.
* ``NAME`` is a column (feature, branch) or an alias; names must be Python identifiers.
* ``FUNCTION`` is one of :data:`FUNCTIONS` (numpy's functions of the same name).
* Arithmetic follows numpy float64 semantics: ``1 / 0`` is ``inf``, ``log(-1)`` is NaN (no
  warning). A selection keeps the events where its value is non-zero (NaN counts as true,
  as in uproot; a comparison with NaN is false).

For ROOT TTrees the same expression is passed to uproot (``cut=``, ``aliases=``), rewritten
by :meth:`Expression.uproot` into uproot's dialect so that both evaluate identically.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval.errors import InputError

__all__ = ["FUNCTIONS", "Expression", "evaluate_aliases", "check_alias_name"]

FUNCTIONS: dict[str, tuple[Callable[..., Any], int]] = {
    "abs": (np.absolute, 1), "sqrt": (np.sqrt, 1), "exp": (np.exp, 1), "log": (np.log, 1),
    "log10": (np.log10, 1), "log1p": (np.log1p, 1), "sin": (np.sin, 1), "cos": (np.cos, 1),
    "tan": (np.tan, 1), "arcsin": (np.arcsin, 1), "arccos": (np.arccos, 1),
    "arctan": (np.arctan, 1), "sinh": (np.sinh, 1), "cosh": (np.cosh, 1),
    "tanh": (np.tanh, 1), "arcsinh": (np.arcsinh, 1), "floor": (np.floor, 1),
    "ceil": (np.ceil, 1), "isfinite": (np.isfinite, 1), "arctan2": (np.arctan2, 2),
    "hypot": (np.hypot, 2), "fmin": (np.fmin, 2), "fmax": (np.fmax, 2),
    "where": (np.where, 3),
}
"""Function name -> (numpy function, number of arguments). Every name is also one of uproot's
default functions with the same numpy implementation, so a ROOT cut means the same thing."""

# Python's operators, as uproot applies them: numpy's on arrays, Python's on two numbers
# (2 ** -1 is 0.5, where numpy's integer power would refuse).
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert,
    ast.Not: lambda v: v == 0,
}
# ROOT's C++ spellings, rewritten before parsing ("!" but not "!=").
_CPP = ((re.compile(r"&&"), " and "), (re.compile(r"\|\|"), " or "),
        (re.compile(r"!(?!=)"), " not "))


def _describe(node: ast.AST) -> str:
    names = {ast.Attribute: "attribute access (a.b)", ast.Subscript: "indexing (a[i])",
             ast.Lambda: "lambda", ast.IfExp: "if-else", ast.BitXor: "'^'",
             ast.FloorDiv: "'//'", ast.MatMult: "'@'", ast.LShift: "'<<'", ast.RShift: "'>>'",
             ast.Is: "'is'", ast.IsNot: "'is not'", ast.In: "'in'", ast.NotIn: "'not in'"}
    return names.get(type(node), type(node).__name__)


@dataclass(frozen=True)
class Expression:
    """A parsed, validated expression (see the module docstring for the grammar).

    Args:
        text: the expression as written.
        what: how error messages name it, e.g. ``"data.selection"``.

    Attributes:
        names: the column and alias names it reads.

    Raises:
        InputError: a syntax error, or a construct outside the grammar (attribute access,
            strings, unknown functions, wrong argument counts, ...), named with its position.
    """

    text: str
    what: str = "expression"
    names: frozenset[str] = field(init=False)
    _tree: ast.Expression = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = str(self.text)
        for pattern, replacement in _CPP:
            source = pattern.sub(replacement, source)
        if not source.strip():
            raise InputError(f"{self.what} is empty")
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise InputError(f"{self.what} {self.text!r} is not a valid expression: "
                             f"{exc.msg}") from None
        names: set[str] = set()
        self._check(tree.body, names)
        object.__setattr__(self, "_tree", tree)
        object.__setattr__(self, "names", frozenset(names))

    # -- validation ----------------------------------------------------------------------
    def _fail(self, node: ast.AST, why: str) -> InputError:
        where = f" at column {node.col_offset + 1}" if hasattr(node, "col_offset") else ""
        return InputError(f"{self.what} {self.text!r}: {why}{where}; see the grammar in "
                          "genval.io.expressions (columns, numbers, arithmetic, comparisons, "
                          f"and/or/not, functions {', '.join(FUNCTIONS)})")

    def _check(self, node: ast.AST, names: set[str]) -> None:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value, names)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise self._fail(node, f"operator {_describe(node.op)} is not allowed")
            self._check(node.left, names)
            self._check(node.right, names)
        elif isinstance(node, ast.UnaryOp):
            self._check(node.operand, names)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _COMPARE:
                    raise self._fail(node, f"comparison {_describe(op)} is not allowed")
            for value in (node.left, *node.comparators):
                self._check(value, names)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                called = node.func.id if isinstance(node.func, ast.Name) else "this"
                close = difflib.get_close_matches(called, list(FUNCTIONS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self._fail(node, f"unknown function {called!r}{hint}")
            if node.keywords:
                raise self._fail(node, "functions take positional arguments only")
            arity = FUNCTIONS[node.func.id][1]
            if len(node.args) != arity:
                raise self._fail(node, f"{node.func.id}() takes {arity} argument(s), got "
                                       f"{len(node.args)}")
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    raise self._fail(arg, "'*' arguments are not allowed")
                self._check(arg, names)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise self._fail(node, f"constant {node.value!r} is not a number")
        else:
            raise self._fail(node, f"{_describe(node)} is not allowed")

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, columns: Mapping[str, NDArray[Any]]) -> Any:
        """The expression's value on ``columns`` (name -> 1D array, all of one length).

        Raises:
            InputError: a name that is not a column (with the closest one), or an operation
                numpy refuses (``&`` on floats: use ``and``).
        """
        self.require_names(columns)
        with np.errstate(all="ignore"):  # inf and NaN are values here, as in numpy
            try:
                return self._eval(self._tree.body, columns)
            except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
                raise InputError(f"{self.what} {self.text!r} cannot be evaluated: {exc} ('&', "
                                 "'|', '~' need booleans or integers: use 'and', 'or', 'not' "
                                 "for conditions on numbers)") from None

    def require_names(self, available: Iterable[str]) -> None:
        """Raise :class:`InputError` unless every name the expression reads is ``available``."""
        names = list(available)
        missing = sorted(self.names - set(names))
        if missing:
            close = difflib.get_close_matches(missing[0], names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise InputError(f"{self.what} {self.text!r} uses {missing[0]!r}, which is not a "
                             f"column or alias{hint}; available: {shown}")

    def _eval(self, node: ast.AST, cols: Mapping[str, NDArray[Any]]) -> Any:
        if isinstance(node, ast.BoolOp):
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = np.not_equal(self._eval(node.values[0], cols), 0)
            for value in node.values[1:]:
                out = combine(out, np.not_equal(self._eval(value, cols), 0))
            return out
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, cols),
                                          self._eval(node.right, cols))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, cols))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, cols)
            out = None
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, cols)
                step = _COMPARE[type(op)](left, right)
                out = step if out is None else np.logical_and(out, step)
                left = right
            return out
        if isinstance(node, ast.Call):
            function = FUNCTIONS[node.func.id][0]  # type: ignore[attr-defined]
            return function(*(self._eval(arg, cols) for arg in node.args))
        if isinstance(node, ast.Name):
            return cols[node.id]
        return node.value  # type: ignore[attr-defined]  # a number, checked in _check

    # -- uproot --------------------------------------------------------------------------
    def uproot(self) -> str:
        """The expression in uproot's Python dialect, meaning exactly what :meth:`evaluate` does.

        uproot hands the expression to numpy as Python would: ``and``, ``or``, ``not`` and
        chained comparisons would ask an array for its truth value. They are rewritten into
        ``logical_and`` / ``logical_or`` (uproot functions), ``(x == 0)`` and pairwise
        comparisons joined by ``logical_and``.
        """
        return ast.unparse(_ToUproot().visit(_copy(self._tree)))


def _copy(tree: ast.Expression) -> ast.Expression:
    return ast.parse(ast.unparse(tree), mode="eval")


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


def _nonzero(node: ast.expr) -> ast.expr:
    return ast.Compare(left=node, ops=[ast.NotEq()], comparators=[ast.Constant(0)])


class _ToUproot(ast.NodeTransformer):
    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        name = "logical_and" if isinstance(node.op, ast.And) else "logical_or"
        out = _nonzero(node.values[0])
        for value in node.values[1:]:
            out = _call(name, out, _nonzero(value))
        return out

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return ast.Compare(left=node.operand, ops=[ast.Eq()], comparators=[ast.Constant(0)])
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) == 1:
            return node
        # Python evaluates a < b < c as (a < b) and (b < c); the middle value once. Every
        # operand here is side-effect free, so repeating it is exact.
        left, out = node.left, None
        for op, right in zip(node.ops, node.comparators, strict=True):
            step = ast.Compare(left=left, ops=[op], comparators=[right])
            out = step if out is None else _call("logical_and", out, step)
            left = right
        return out  # type: ignore[return-value]


def check_alias_name(name: str, what: str = "alias") -> str:
    """``name`` if it can be written in an expression (an identifier, not a function name)."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise InputError(f"{what} name {name!r} is not an identifier (letters, digits, '_'; "
                         "not starting with a digit), so expressions could not use it")
    if name in FUNCTIONS:
        raise InputError(f"{what} name {name!r} is also a function name; choose another")
    return name


def evaluate_aliases(wanted: set[str] | frozenset[str], columns: Mapping[str, NDArray[Any]],
                     aliases: Mapping[str, Expression], n_events: int
                     ) -> dict[str, NDArray[np.float64]]:
    """The aliases among ``wanted`` (and those they use), as float64 columns of ``n_events``.

    Aliases may use columns and other aliases; a cycle is an error.

    Raises:
        InputError: an alias that is also a column name, a cycle, or a value that is not one
            number per event.
    """
    shadowing = sorted(set(aliases) & set(columns))
    if shadowing:
        raise InputError(f"alias {shadowing[0]!r} has the name of a column; rename the alias")
    values: dict[str, NDArray[np.float64]] = {}

    def compute(name: str, stack: tuple[str, ...]) -> NDArray[np.float64]:
        if name in values:
            return values[name]
        if name in stack:
            raise InputError(f"aliases refer to each other in a cycle: "
                             f"{' -> '.join((*stack, name))}")
        expr = aliases[name]
        inputs = dict(columns)
        for used in expr.names & set(aliases):
            inputs[used] = compute(used, (*stack, name))
        value = np.asarray(expr.evaluate(inputs))
        if value.ndim == 0:
            value = np.full(n_events, value)
        if value.shape != (n_events,) or not (np.issubdtype(value.dtype, np.number)
                                             or value.dtype == np.bool_):
            raise InputError(f"{expr.what} {expr.text!r} gives {value.dtype} of shape "
                             f"{value.shape}, not one number per event")
        values[name] = value.astype(np.float64)
        return values[name]

    for name in sorted(wanted):  # sorted: the same cycle is reported the same way
        if name in aliases:
            compute(name, ())
    return values
