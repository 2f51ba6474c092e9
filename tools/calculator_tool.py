"""A calculator tool that evaluates arithmetic without ``eval``.

The expression is parsed with ``ast`` and only numbers, parentheses and arithmetic operators are
allowed, so model-written input cannot reach names, attributes or calls. Sizes are bounded: a
policy can otherwise ask for ``9**9**9`` and hang the process computing it.
"""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

from agentrl.tools.tool import tool

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 10**100

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (limit {MAX_EXPONENT})")
        if isinstance(node.op, ast.Div) and type(left) is int and type(right) is int and right != 0:
            exact = Fraction(left, right)  # exact for big ints, where float division would round
            return int(exact) if exact.denominator == 1 else float(exact)
        value = _BINARY[type(node.op)](left, right)
        if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE:
            raise ValueError("result is out of range")
        return value
    raise ValueError(f"unsupported syntax: {ast.dump(node)[:60]}")


def evaluate_expression(expression: str) -> int | float:
    """Evaluate an arithmetic expression; raises ValueError or ZeroDivisionError on bad input."""
    expression = expression.replace("×", "*").replace("÷", "/").replace("^", "**")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse expression: {exc.msg}") from None
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)  # 8 / 2 reads better as 4 than 4.0; beyond 2**53 the float is not exact
    return value


@tool(timeout=5)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses.

    Args:
        expression: The expression to evaluate, for example "(12 + 7) * 3".
    """
    return str(evaluate_expression(expression))
