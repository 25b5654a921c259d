#!/usr/bin/env python3
"""Print a token the running service accepts: ``scripts/mint_token.py USER_ID [--ttl SECONDS]``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.auth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
