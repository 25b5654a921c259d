"""``scripts/mint_token.py USER_ID [--ttl SECONDS]``: print a token the service accepts.

It reads the same settings as the service (environment and ``.env``), so the token is
signed with the running service's secret and carries its issuer and audience. The token is
the last line of stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.auth import mint
from service.config import Settings
from service.errors import ConfigError, InvalidPayload
from service.protocol import parse_user_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mint_token.py", description=__doc__.splitlines()[0])
    parser.add_argument("user_id", metavar="USER_ID", help="the token's sub claim")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be a positive number of seconds")
    try:
        parse_user_id(args.user_id, "is invalid:")
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"mint_token: settings are invalid:\n{exc}", file=sys.stderr)
        return 2
    except InvalidPayload as exc:
        parser.error(f"USER_ID {exc}")
    print(mint(settings, args.user_id, args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
