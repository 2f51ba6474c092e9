"""Which chat template to render with: the one place that turns a template name into a template.

``agentrl train`` (``model.chat_template``), ``agentrl eval --chat-template`` and ``agentrl doctor
--template`` all resolve names here, so the same name always means the same template:

- ``auto`` (or ``stock``): the tokenizer's own template, as shipped with the model;
- ``training``: TRL's training variant of that template (prefix-preserving, so multi-turn
  conversations stay token-exact, with generation markers), from
  ``trl.chat_template_utils.get_training_chat_template``; an error when TRL has none for it;
- a path to a ``.jinja`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrl.errors import UserError

TEMPLATE_NAMES = ("auto", "stock", "training")


def resolve_chat_template(tokenizer: Any, name: str = "auto") -> str | None:
    """The template text to render with, or None for the tokenizer's own."""
    if name in ("auto", "stock"):
        return None
    if name == "training":
        from trl.chat_template_utils import get_training_chat_template

        try:
            # None means the tokenizer's own template already is prefix-preserving with markers.
            return get_training_chat_template(tokenizer)
        except ValueError as exc:
            raise UserError(f"TRL has no training chat template for this tokenizer: {exc}") from None
    path = Path(name)
    if not path.is_file():
        raise UserError(f"chat template must be auto, stock, training or a .jinja file; {name!r} is none of these")
    return path.read_text(encoding="utf-8")
