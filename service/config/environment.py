"""Reading settings from ``SIGNAL_*`` environment variables and an optional ``.env`` file (real
environment variables win): text in, typed values out.

This module turns text into typed values, and names a variable whose text cannot be read;
every other check (ranges, URLs, keys, rules across settings) is
:func:`service.config.settings.check`, which runs however the settings are made. It knows the
fields by their variables (:mod:`service.config.fields`), not the settings class:
``Settings.from_env`` calls it and builds the settings from what it read, so all problems are
reported together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from service.config.fields import (
    BOUNDS,
    ICE_SERVERS_HELP,
    PREFIX,
    RATE_FIELDS,
    WEBHOOK_EVENTS,
    WHOLE,
    bounds_message,
    rate_message,
    variable,
)
from service.config.values import JwksEndpoint, Rate, Secret, normal_origin

#: the value SIGNAL_JWT_USER_IDS takes for one shared namespace of user ids
SHARED: str = "shared"


def read_environment(environ: Mapping[str, str] | None = None,
                     env_file: str | Path | None = ".env", *,
                     known: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """The settings' values that ``SIGNAL_*`` variables set (from ``environ``, default
    ``os.environ``, over ``env_file`` when it exists; ``SIGNAL_ENV_FILE`` names another), by
    field name, and every variable that could not be read. ``known``: the variable names
    (without the prefix) that set a field; any other ``SIGNAL_`` name is a problem."""
    env = dict(os.environ if environ is None else environ)
    env_file = env.get(f"{PREFIX}ENV_FILE", env_file)
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(env)
    return parse({k: v for k, v in merged.items() if k.startswith(PREFIX)}, known)


def parse(values: Mapping[str, str],
          known: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """Typed values from ``SIGNAL_*`` text, by field name (an unset or blank variable is left
    out: its field keeps its default), and one line per variable that could not be read."""
    problems: list[str] = []
    kwargs: dict[str, Any] = {}

    def field(name: str, convert: Callable[[str, str], Any]) -> None:
        var = variable(name)
        raw = values.get(var)
        if raw is None or raw.strip() == "":
            return
        try:
            value = convert(raw.strip(), var)
        except ValueError as exc:
            problems.append(str(exc) or bounds_message(name, raw))
            return
        kwargs[name] = value

    for var in sorted(values):
        if var[len(PREFIX):] not in known:
            problems.append(f"{var} is not a setting of this service (typo?).")

    field("jwt_issuers", _text_list)
    issuers: tuple[str, ...] = kwargs.get("jwt_issuers", ())
    user_ids = values.get(variable("jwt_shared_user_ids"), "").strip()
    field("jwt_secret", _secret)
    field("jwt_previous_secret", _secret)
    field("jwt_public_keys", _public_keys)
    field("jwt_jwks", lambda raw, var: _jwks(raw, var, issuers))
    field("jwt_algorithms", _text_list)
    if kwargs.get("jwt_algorithms") == ():
        del kwargs["jwt_algorithms"]  # an empty list keeps the default
    field("jwt_audiences", _text_list)
    field("jwt_user_claim", _text)
    field("jwt_denylist_file", lambda raw, var: Path(raw).expanduser())
    if user_ids:
        kwargs["jwt_shared_user_ids"] = user_ids.lower() == SHARED
        if user_ids.lower() != SHARED:
            field("jwt_user_id_prefixes", _prefixes)
    field("cors_origins", _origins)
    field("log_level", lambda raw, var: raw.upper())
    field("trusted_proxies", _text_list)
    field("redis_url", _secret)
    field("redis_secret", _secret)
    field("redis_channel", _text)
    field("sticky_sessions", _bool)
    field("demo", _bool)
    field("demo_tokens", _bool)
    field("ice_servers", _ice_servers)
    field("busy_policy", lambda raw, var: raw.lower())
    field("turn_urls", _text_list)
    field("turn_secret", _secret)
    field("metrics_token", _secret)
    field("api_keys", lambda raw, var: tuple(Secret(k) for k in _text_list(raw, var)))
    field("webhook_url", _secret)
    field("webhook_secret", _secret)
    field("webhook_events", _webhook_events)
    field("call_policy_url", _secret)
    field("call_policy_fail_open", _bool)
    for name in BOUNDS:
        field(name, _whole if name in WHOLE else _seconds)
    for name in RATE_FIELDS:
        field(name, _rate)
    return kwargs, problems


def _webhook_events(raw: str, var: str) -> tuple[str, ...]:
    names = _text_list(raw.lower(), var)
    return WEBHOOK_EVENTS if names == ("all",) else names


def _secret(raw: str, var: str) -> Secret:
    return Secret(raw)


def _text(raw: str, var: str) -> str:
    if any(ord(c) < 32 for c in raw):
        raise ValueError(f"{var} contains control characters.")
    return raw


def _text_list(raw: str, var: str) -> tuple[str, ...]:
    return tuple(_text(item.strip(), var) for item in raw.split(",") if item.strip())


def _whole(raw: str, var: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("") from None  # reported with the setting's bounds


def _seconds(raw: str, var: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("") from None


def _bool(raw: str, var: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{var} must be true or false, got {raw!r}.")


def _rate(raw: str, var: str) -> Rate:
    try:
        return Rate.parse(raw)
    except ValueError:
        raise ValueError(rate_message(var, repr(raw))) from None


def _public_keys(raw: str, var: str) -> tuple[str, ...]:
    """Inline PEM (``\\n`` escapes allowed) or the path of a PEM file; several concatenated
    public keys are allowed (for rotation). Each block is checked by the settings."""
    text = raw.replace("\\n", "\n") if raw.lstrip().startswith("-----BEGIN") else None
    if text is None:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ValueError(f"{var} is neither a PEM public key nor the path of a file.")
        text = path.read_text()
    blocks = tuple(f"-----BEGIN{part}" for part in text.split("-----BEGIN")[1:])
    if not blocks:
        raise ValueError(f"{var} holds no PEM block.")
    return blocks


def _jwks(raw: str, var: str, issuers: tuple[str, ...]) -> tuple[JwksEndpoint, ...]:
    """Comma-separated entries, each ``URL`` (bound to the single SIGNAL_JWT_ISSUER) or
    ``ISSUER URL``."""
    endpoints = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        parts = entry.split()
        if len(parts) == 1:
            if len(issuers) != 1:
                raise ValueError(
                    f"{var}: a bare URL needs exactly one {PREFIX}JWT_ISSUER to bind its keys "
                    f"to; with several issuers write 'ISSUER URL' entries."
                )
            issuer, url = issuers[0], parts[0]
        elif len(parts) == 2:
            issuer, url = parts
        else:
            raise ValueError(f"{var} entries are 'URL' or 'ISSUER URL', got {entry!r}.")
        endpoints.append(JwksEndpoint(issuer=issuer, url=url))
    return tuple(endpoints)


def _prefixes(raw: str, var: str) -> tuple[tuple[str, str], ...]:
    """``ISSUER PREFIX`` entries, comma-separated."""
    pairs = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        parts = entry.split()
        if len(parts) != 2:
            raise ValueError(f"{var} is 'shared' or 'ISSUER PREFIX' entries separated by "
                             f"commas, got {entry!r}.")
        pairs.append((_text(parts[0], var), _text(parts[1], var)))
    return tuple(pairs)


def _origins(raw: str, var: str) -> tuple[str, ...]:
    origins = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        origin = normal_origin(item)
        if origin is None:
            raise ValueError(
                f"{var} entries must look like https://app.example.com[:port] "
                f"(scheme and host, no path), got {item!r}."
            )
        origins.append(origin)
    return tuple(origins)


def _ice_servers(raw: str, var: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of RTCIceServer objects: ``[{"urls": "stun:stun.example.com:3478"}]``."""
    try:
        servers = json.loads(raw)
    except ValueError:
        raise ValueError(ICE_SERVERS_HELP) from None
    if not isinstance(servers, list):
        raise ValueError(ICE_SERVERS_HELP)
    return tuple(servers)
