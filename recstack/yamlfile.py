"""Reading a YAML file (a config, a table schema) with one error for everything that keeps it from
being read. Below both recstack.config and recstack.data, which read YAML files of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from recstack.errors import ConfigError


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content (None when empty); anything that keeps it from being read is one
    ConfigError naming `what` (e.g. "config file") and the path."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); it should be a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}") from None
    except ValueError as exc:  # a value YAML parses but Python cannot hold (an integer of 5,000 digits)
        raise ConfigError(f"{what} {path} holds a value that cannot be read: {exc}") from None
