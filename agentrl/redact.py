"""Keep API keys out of everything a run writes or reports.

A key can reach a recipe, eval settings or a metrics sink's configuration in two ways: under a name
that says what it is (``env.kwargs.api_key=...`` for an environment that calls a judge model), or
as a value copied from the environment (``env.kwargs.header="Bearer $OPENAI_API_KEY"``). :func:`redact`
catches both before anything is written: string values under a secret-looking key, the values of the
process's secret-looking environment variables wherever they appear in a string, and the password of
a URL (``https://user:pass@host``). The object passed to the code that needs the key (the environment's
constructor) is never changed; only what is recorded.

Secret-looking names, matched on whole underscore-separated words at the end of the name, in any case
(dots and dashes count as underscores): ``*_API_KEY``, ``*_ACCESS_KEY``, ``*_SECRET_KEY``,
``*_PRIVATE_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``, ``*_PASSWD``, ``*_CREDENTIAL(S)``,
``*_AUTHORIZATION``, and each of those words alone (``token``, ``api_key``, an HTTP ``Authorization``
header). So ``E2B_API_KEY``, ``WANDB_API_KEY``,
``OPENAI_API_KEY``, ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN`` and ``AWS_SECRET_ACCESS_KEY`` are secrets;
``max_new_tokens``, ``pad_token_id`` and a tokenizer's ``eos_token`` are not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
MIN_SECRET_CHARS = 16
"""Environment values shorter than this are not searched for: replacing "postgres" or "true" everywhere
would mangle records (a model name, an output directory), and API keys are longer (20 to 60 characters)."""

_SECRET_NAME = re.compile(
    r"(?:^|_)(?:(?:API|ACCESS|SECRET|SECRET_ACCESS|PRIVATE)_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTHORIZATION)$"
)
_VOCABULARY_TOKEN = re.compile(r"(?:^|_)(?:EOS|BOS|PAD|UNK|SEP|CLS|MASK|STOP|END|START|EOT|MAX|SPECIAL)_TOKEN$")
"""Names of a tokenizer's tokens (``eos_token``, ``stop_token``): settings, not secrets."""
_URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:]*):[^/@\s]+@")


def is_secret_name(name: str) -> bool:
    """Whether a variable or key of this name holds a secret (see the module docstring)."""
    upper = re.sub(r"[.\-]", "_", str(name)).upper()
    return bool(_SECRET_NAME.search(upper)) and not _VOCABULARY_TOKEN.search(upper)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secret-named variables of ``environ`` (default ``os.environ``), longest first, so
    that a key that contains another is replaced whole."""
    env = os.environ if environ is None else environ
    found = {v.strip() for k, v in env.items() if is_secret_name(k) and len(v.strip()) >= MIN_SECRET_CHARS}
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, values: list[str] | None = None) -> str:
    """``text`` with every secret environment value and every URL password replaced by ``<redacted>``."""
    for value in secret_values() if values is None else values:
        text = text.replace(value, REDACTED)
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)


def redact(data: Any, values: list[str] | None = None) -> Any:
    """A copy of JSON-like ``data`` (dicts, lists, tuples, scalars) that is safe to write or send."""
    values = secret_values() if values is None else values

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return redact_text(x, values)
        if isinstance(x, Mapping):
            return {k: REDACTED if is_secret_name(k) and isinstance(v, str) and v else walk(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(walk(v) for v in x)
        return x

    return walk(data)
