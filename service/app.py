"""The app ``sanic service.app`` serves, built from the environment and ``.env``."""

from __future__ import annotations

import sys

from service.config import Settings
from service.errors import ConfigError
from service.factory import create_app

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    sys.exit(f"signaling: cannot start, settings are invalid:\n{exc}")

app = create_app(_settings)
