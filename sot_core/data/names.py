"""Names and ids that become paths: checked, never rewritten into other names.

A curated dataset's name becomes part of its version folder (``curated/<name>-<time>-<id>``) and
keys its nightly watermark; dataset ids, stage names and keys become file and folder names under
the store's home. A value with a separator, a leading dot (``..``, hidden files) or nothing in it
would reach outside its folder or clash with the store's own files, so it is refused with an
error naming it. The options are checked the same way where they are read (`sot_core.config`
``NAME_RULE``); these checks stand behind them for every caller of the library.
"""
from __future__ import annotations

import re

from sot_core.config import NAME_RULE
from sot_core.errors import OptionError, StoreError

# One file or folder name: no separator, no leading dot, no space or control character.
PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_COMPONENT = 200  # well under the 255 bytes a file name may have


def check_name(name, option: str = "name") -> str:
    """`name` unchanged when it follows the config's ``NAME_RULE``; else `OptionError` naming `option`."""
    if not isinstance(name, str) or not re.fullmatch(NAME_RULE["pattern"], name):
        raise OptionError(option, name, f"not a plain name ({NAME_RULE['pattern_help']} characters); it names "
                          "folders in the store")
    return name


def plain_component(value, what: str) -> str:
    """`value` unchanged when it is safe as one file or folder name; else `StoreError` naming it."""
    if not isinstance(value, str) or len(value) > MAX_COMPONENT or not PLAIN.fullmatch(value):
        raise StoreError(f"{what} {value!r} cannot be a file name in the store: it must be letters, digits, '.', "
                         f"'_' or '-', starting with a letter or digit, at most {MAX_COMPONENT} characters")
    return value
