"""Ready-made tools for agentrl environments (installed as ``agentrl.tools``)."""

from agentrl.tools.calculator import calculator, evaluate_expression

__all__ = ["calculator", "evaluate_expression"]
