"""The pure core stays pure: config, errors, auth, protocol and expiry import neither Sanic
nor python-socketio, so they are usable and testable without a server."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_transport() -> None:
    """Importing the core in a fresh interpreter loads no sanic, socketio or engineio module."""
    code = (
        "import sys, service.config, service.errors, service.auth, service.protocol, "
        "service.expiry, service.logs, service.limits, service.guard\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sanic', 'socketio', 'engineio'))\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""


def test_only_the_auth_package_imports_jwt() -> None:
    """``jwt`` is imported by service/auth/ and nowhere else in the service."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "service"
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if any(line.startswith(("import jwt", "from jwt"))
                              for line in p.read_text().splitlines()))
    assert importers and all(p.startswith("auth/") for p in importers), importers
