"""``scripts/mint_token.py USER_ID``: print a token the service accepts (the last stdout line).

HS256 (the default) signs with ``SIGNAL_JWT_SECRET``, read from the environment and ``.env``
like the service does; the token carries the first configured issuer and audience.

``--alg RS256|ES256|EdDSA`` signs as an identity provider would: with a private key kept in
``--key-dir`` (created on first use) whose public half is written beside it as
``<ALG>.pub.pem`` and into ``jwks.json``, ready for ``SIGNAL_JWT_PUBLIC_KEY`` or for serving as
``SIGNAL_JWT_JWKS_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.auth.minting import (
    ASYMMETRIC,
    generate_key,
    load_private_key,
    private_pem,
    public_jwk,
    public_pem,
    sign,
    token_claims,
)
from service.config import Settings
from service.errors import ConfigError, InvalidPayload
from service.protocol import parse_user_id


def _claim(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("claims are NAME=VALUE (VALUE is JSON, else a string)")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def key_pair(key_dir: Path, alg: str, kid: str | None) -> tuple[Any, str]:
    """The private key for ``alg`` in ``key_dir`` (generated on first use) and its kid; keeps
    ``<alg>.pub.pem`` and ``jwks.json`` up to date."""
    key_dir.mkdir(parents=True, exist_ok=True)
    private_file = key_dir / f"{alg}.pem"
    if private_file.exists():
        key = load_private_key(private_file.read_text())
    else:
        key = generate_key(alg)
        fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(private_pem(key))
    (key_dir / f"{alg}.pub.pem").write_text(public_pem(key))
    jwk = public_jwk(key, alg, kid)
    jwks_file = key_dir / "jwks.json"
    keys = json.loads(jwks_file.read_text())["keys"] if jwks_file.exists() else []
    keys = [k for k in keys if k.get("kid") != jwk["kid"]] + [jwk]
    jwks_file.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
    return key, str(jwk["kid"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mint_token.py",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("user_id", metavar="USER_ID", help="the token's user claim (sub)")
    parser.add_argument("--ttl", type=int, default=3600,
                        help="lifetime in seconds (default 3600; negative makes it expired)")
    parser.add_argument("--alg", default="HS256", choices=["HS256", *ASYMMETRIC])
    parser.add_argument("--key-dir", type=Path, default=Path(".keys"),
                        help="where asymmetric keys and jwks.json live (default .keys)")
    parser.add_argument("--kid", help="key id (default: the key's RFC 7638 thumbprint)")
    parser.add_argument("--iss", help="issuer (default: the first SIGNAL_JWT_ISSUER)")
    parser.add_argument("--aud", help="audience (default: the first SIGNAL_JWT_AUDIENCE)")
    parser.add_argument("--user-claim", default=None,
                        help="claim to put USER_ID in (default: SIGNAL_JWT_USER_CLAIM or sub)")
    parser.add_argument("--claim", type=_claim, action="append", default=[],
                        metavar="NAME=VALUE", help="an extra claim; repeat for more")
    args = parser.parse_args(argv)
    if args.ttl == 0:
        parser.error("--ttl must not be 0")
    try:
        parse_user_id(args.user_id, "is invalid:")
    except InvalidPayload as exc:
        parser.error(f"USER_ID {exc}")
    try:
        settings: Settings | None = Settings.from_env()
    except ConfigError as exc:
        if args.alg == "HS256":
            print(f"mint_token: settings are invalid:\n{exc}", file=sys.stderr)
            return 2
        settings = None  # an IdP-style token needs no service secret
    claims = token_claims(settings, args.user_id, args.ttl, claims=dict(args.claim))
    user_claim = args.user_claim or (settings.jwt_user_claim if settings else "sub")
    if user_claim != "sub":
        claims[user_claim] = claims.pop("sub")
    for name, value in (("iss", args.iss), ("aud", args.aud)):
        if value is not None:
            claims[name] = value
    if args.alg == "HS256":
        assert settings is not None
        if settings.jwt_secret is None:
            print("mint_token: SIGNAL_JWT_SECRET is not set; use --alg for an IdP-style token",
                  file=sys.stderr)
            return 2
        print(sign(claims, settings.jwt_secret.reveal(), "HS256"))
        return 0
    key, kid = key_pair(args.key_dir, args.alg, args.kid)
    print(f"signed with {args.key_dir / (args.alg + '.pem')} (kid {kid}); public key in "
          f"{args.key_dir / (args.alg + '.pub.pem')} and {args.key_dir / 'jwks.json'}",
          file=sys.stderr)
    print(sign(claims, key, args.alg, kid=kid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
