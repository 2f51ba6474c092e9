"""Chat: how messages become tokens and sampled tokens become messages, exactly.

- :mod:`~agentrl.chat.parsing`: tool calls out of an assistant turn (never raises);
- :mod:`~agentrl.chat.templates`: which chat template a name means;
- :mod:`~agentrl.chat.format`: ``ChatFormat``, rendering through the template (Hermes tools for
  templates without tool support);
- :mod:`~agentrl.chat.conversation`: ``TokenConversation``, token-exact multi-turn sequences;
- :mod:`~agentrl.chat.doctor`: ``agentrl doctor``'s checks.
"""

from agentrl.lazy import lazy_exports

_EXPORTS = {
    "ChatFormat": "agentrl.chat.format",
    "load_chat_format": "agentrl.chat.format",
    "TokenConversation": "agentrl.chat.conversation",
    "parse_turn": "agentrl.chat.parsing",
    "ToolCall": "agentrl.chat.parsing",
    "resolve_chat_template": "agentrl.chat.templates",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
