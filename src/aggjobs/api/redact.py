"""Token secrets stay out of logs, in any spelling (docs/api.md, "Secrets in logs").

A secret may come in the query string (`?token=agj_...`, for links), and Starlette decodes
the query before FastAPI looks for `token`: `?tok%65n=agj_...` or `?%74oken=agj_...` is
the same request as `?token=agj_...`, while uvicorn's access log shows the query string as
it came. So a log line is redacted twice:

1. its query strings are parsed: pairs split on `&` and `;`, each key percent-decoded
   (`+` as a space, repeatedly, so `%2574` too), lower-cased and stripped of everything but
   letters and digits; the value of every key naming a secret (`token`, `secret`,
   `password`, `apikey`, `authorization`, also inside a longer name) becomes `<redacted>`,
   however often the key repeats;
2. belt and braces, any word of the line (a run of characters between spaces, quotes and
   `& ; ? / = , #`) that, percent-decoded, contains the prefix of a secret (`agj_`, in any
   case) becomes `<redacted>`, wherever it is: another parameter, the path, a header.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from .tokens import PREFIX

REDACTED = "<redacted>"
SECRET_KEYS = ("token", "secret", "password", "apikey", "authorization")
DECODE_ROUNDS = 4  # a doubly or triply percent-encoded secret is still one

QUERY = re.compile(r"\?([^\s\"'#]*)")
PAIR_SEPARATORS = re.compile(r"([&;])")
WORD = re.compile(r"[^\s\"'&;?/=,#]+")
NOT_ALNUM = re.compile(r"[^a-z0-9]")


def decoded(text: str) -> str:
    for _ in range(DECODE_ROUNDS):
        plain = unquote_plus(text)
        if plain == text:
            break
        text = plain
    return text


def names_a_secret(key: str) -> bool:
    name = NOT_ALNUM.sub("", decoded(key).lower())
    return any(word in name for word in SECRET_KEYS)


def looks_secret(word: str) -> bool:
    return PREFIX in decoded(word).lower()


def redact_query(query: str) -> str:
    parts = []
    for part in PAIR_SEPARATORS.split(query):
        key, eq, _ = part.partition("=")
        parts.append(f"{key}={REDACTED}" if eq and names_a_secret(key) else part)
    return "".join(parts)


def redact(text: str) -> str:
    """`text` without any secret: see the module's docstring."""
    text = QUERY.sub(lambda m: "?" + redact_query(m.group(1)), text)
    return WORD.sub(lambda m: REDACTED if looks_secret(m.group()) else m.group(), text)


class RedactTokens(logging.Filter):
    """Redacts the records of the logger it is put on (uvicorn's access log): their message
    and each string argument, keeping the arguments' shape, which uvicorn's access
    formatter unpacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def redact_access_log() -> None:
    """Put the filter on uvicorn's loggers (before `uvicorn.run`, whose logging setup
    keeps the filters of existing loggers)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
