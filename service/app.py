"""The app ``sanic service.app`` serves, built from the environment and ``.env``.

Before anything imports prometheus-client: a fresh directory for its multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``), made by the main process and inherited by every worker, so
``GET /metrics`` on any worker sums them all (see :mod:`service.telemetry.metrics`). An
operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used as is (empty it between runs).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

#: the metrics directory this process made (the main process; workers inherit it)
_made: str | None = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="signaling-metrics-")

from service.config import Settings  # noqa: E402
from service.errors import ConfigError  # noqa: E402
from service.factory import create_app  # noqa: E402

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    sys.exit(f"signaling: cannot start, settings are invalid:\n{exc}")

app = create_app(_settings)

if _made is not None:
    @app.main_process_stop
    async def _remove_metrics_dir(app: Any) -> None:
        assert _made is not None
        shutil.rmtree(_made, ignore_errors=True)
