"""Settings are read once, validated, and every problem is named at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.config import JwksEndpoint, Rate, Secret, Settings
from service.errors import ConfigError

GOOD_SECRET = "s" * 32


def test_defaults_with_only_a_secret() -> None:
    """A secret alone is a complete configuration; the rest has safe defaults."""
    settings = Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET}, env_file=None)
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.reveal() == GOOD_SECRET
    assert (settings.jwt_issuers, settings.jwt_audiences) == ((), ())
    assert settings.jwt_leeway == 5
    assert settings.cors_origins == ()
    assert settings.log_level == "INFO"


def test_every_setting_is_read() -> None:
    """Each documented variable lands in its field, normalised."""
    settings = Settings.from_env({
        "SIGNAL_JWT_SECRET": GOOD_SECRET,
        "SIGNAL_JWT_ISSUER": "https://idp.example.com/",
        "SIGNAL_JWT_AUDIENCE": "signaling",
        "SIGNAL_JWT_LEEWAY": "30",
        "SIGNAL_CORS_ORIGINS": "https://App.example.com, http://localhost:3000,",
        "SIGNAL_LOG_LEVEL": "debug",
    }, env_file=None)
    assert settings.jwt_issuers == ("https://idp.example.com/",)
    assert settings.jwt_audiences == ("signaling",)
    assert settings.jwt_leeway == 30
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert settings.log_level == "DEBUG"


def test_all_problems_are_reported_together() -> None:
    """One error lists every bad variable by name, and never prints the secret."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({
            "SIGNAL_JWT_SECRET": "too-short-secret",
            "SIGNAL_JWT_LEEWAY": "soon",
            "SIGNAL_CORS_ORIGINS": "app.example.com",
            "SIGNAL_LOG_LEVEL": "LOUD",
            "SIGNAL_JWT_SECRETT": "typo",
        }, env_file=None)
    message = str(caught.value)
    for var in ("SIGNAL_JWT_SECRET is too short", "SIGNAL_JWT_LEEWAY", "SIGNAL_CORS_ORIGINS",
                "SIGNAL_LOG_LEVEL", "SIGNAL_JWT_SECRETT"):
        assert var in message
    assert "too-short-secret" not in message
    assert len(caught.value.problems) == 5


def test_missing_secret_is_named() -> None:
    """Without SIGNAL_JWT_SECRET start-up stops and says so."""
    with pytest.raises(ConfigError, match="No key to verify tokens with"):
        Settings.from_env({}, env_file=None)


@pytest.mark.parametrize("leeway", ["-1", "301", "1.5", "five"])
def test_leeway_bounds(leeway: str) -> None:
    """Leeway is a whole number of seconds from 0 to 300."""
    with pytest.raises(ConfigError, match="SIGNAL_JWT_LEEWAY"):
        Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET, "SIGNAL_JWT_LEEWAY": leeway},
                          env_file=None)


@pytest.mark.parametrize("origin", ["https://app.example.com/path", "ftp://x.example.com",
                                    "https://", "https://u:p@app.example.com"])
def test_origins_must_be_scheme_and_host(origin: str) -> None:
    """An origin with a path, another scheme, no host or credentials is refused."""
    with pytest.raises(ConfigError, match="SIGNAL_CORS_ORIGINS"):
        Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET, "SIGNAL_CORS_ORIGINS": origin},
                          env_file=None)


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    """``.env`` supplies values; a real environment variable overrides it."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"SIGNAL_JWT_SECRET={GOOD_SECRET}\nSIGNAL_JWT_LEEWAY=10\n")
    settings = Settings.from_env({"SIGNAL_JWT_LEEWAY": "20"}, env_file=env_file)
    assert settings.jwt_secret == Secret(GOOD_SECRET)
    assert settings.jwt_leeway == 20


def test_env_file_can_be_named_by_variable(tmp_path: Path) -> None:
    """``SIGNAL_ENV_FILE`` points at another file."""
    other = tmp_path / "prod.env"
    other.write_text(f"SIGNAL_JWT_SECRET={GOOD_SECRET}\nSIGNAL_JWT_AUDIENCE=calls\n")
    settings = Settings.from_env({"SIGNAL_ENV_FILE": str(other)}, env_file=None)
    assert settings.jwt_audiences == ("calls",)


def test_secret_never_shows_in_repr() -> None:
    """Neither ``repr`` nor ``str`` of the settings reveals the secret."""
    settings = Settings(jwt_secret=Secret(GOOD_SECRET))
    assert GOOD_SECRET not in repr(settings)
    assert GOOD_SECRET not in str(settings)
    assert "**********" in repr(settings)


def test_direct_construction_refuses_a_short_secret() -> None:
    """Tests and embedders building Settings by hand get the same secret check."""
    with pytest.raises(ConfigError, match="too short"):
        Settings(jwt_secret=Secret("short"))


def test_env_example_documents_every_setting() -> None:
    """Every variable the service reads appears in .env.example, and nothing else does."""
    from service.config import KNOWN

    text = (Path(__file__).parent.parent / ".env.example").read_text()
    documented = {line.lstrip("# ").split("=")[0][len("SIGNAL_"):]
                  for line in text.splitlines() if line.lstrip("# ").startswith("SIGNAL_")}
    assert documented == set(KNOWN)


def test_ice_servers_setting() -> None:
    """SIGNAL_ICE_SERVERS is a JSON list of RTCIceServer objects; anything else is named."""
    good = '[{"urls": "stun:stun.example.com:3478"}, {"urls": ["turn:t.example.com"], ' \
           '"username": "u", "credential": "p"}]'
    settings = Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET, "SIGNAL_ICE_SERVERS": good},
                                 env_file=None)
    assert settings.ice_servers[0] == {"urls": "stun:stun.example.com:3478"}
    for bad in ('{"urls": "stun:x"}', '[{"url": "stun:x"}]', "[1]", "nope",
                '[{"urls": "stun:x", "extra": 1}]'):
        with pytest.raises(ConfigError, match="SIGNAL_ICE_SERVERS"):
            Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET, "SIGNAL_ICE_SERVERS": bad},
                              env_file=None)


@pytest.mark.parametrize(("fields", "variable"), [
    ({"jwt_jwks": (JwksEndpoint("https://idp.example.com/", "http://idp.example.com/jwks"),),
      "jwt_issuers": ("https://idp.example.com/",)}, "SIGNAL_JWT_JWKS_URL"),
    ({"max_queued_messages": 0}, "SIGNAL_MAX_QUEUED_MESSAGES"),
    ({"jwt_leeway": -1}, "SIGNAL_JWT_LEEWAY"),
    ({"auth_timeout": float("nan")}, "SIGNAL_AUTH_TIMEOUT"),
    ({"max_message_bytes": 10.5}, "SIGNAL_MAX_MESSAGE_BYTES"),
    ({"cors_origins": ("app.example.com",)}, "SIGNAL_CORS_ORIGINS"),
    ({"log_level": "LOUD"}, "SIGNAL_LOG_LEVEL"),
    ({"limit_relays": Rate(-1, 5)}, "SIGNAL_LIMIT_RELAYS"),
    ({"trusted_proxies": ("not-a-network",)}, "SIGNAL_TRUSTED_PROXIES"),
    ({"redis_channel": "bad channel"}, "SIGNAL_REDIS_CHANNEL"),
    ({"redis_url": Secret("http://x"), "redis_secret": Secret("r" * 32)}, "SIGNAL_REDIS_URL"),
    ({"jwt_public_keys": ("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",)},
     "SIGNAL_JWT_PUBLIC_KEY"),
    ({"jwt_denylist_file": Path("/nonexistent/revoked.txt")}, "SIGNAL_JWT_DENYLIST_FILE"),
    ({"ice_servers": ({"url": "stun:x"},)}, "SIGNAL_ICE_SERVERS"),
])
def test_direct_construction_runs_every_check(fields: dict[str, Any], variable: str) -> None:
    """``Settings(...)`` built directly gets the same per-field checks as the environment
    (before: an http:// JWKS URL, a zero queue or a negative leeway passed), naming the
    variable an operator would set."""
    with pytest.raises(ConfigError, match=variable):
        Settings(jwt_secret=Secret(GOOD_SECRET), **fields)


def test_one_message_per_bad_variable_from_the_environment() -> None:
    """A value that cannot be read is named once, with its bounds."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET, "SIGNAL_NODE_TTL": "1",
                           "SIGNAL_MAX_QUEUED_MESSAGES": "lots"}, env_file=None)
    assert caught.value.problems == [
        "SIGNAL_MAX_QUEUED_MESSAGES must be a whole number from 16 to 1000000, got 'lots'.",
        "SIGNAL_NODE_TTL must be a number of seconds from 2 to 300, got 1.0.",
    ]


def test_the_heartbeat_is_a_setting() -> None:
    """SIGNAL_PING_INTERVAL and SIGNAL_PING_TIMEOUT are read as seconds (fractions too: the
    protocol suites run at 300/200 ms) and bounded."""
    settings = Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET, "SIGNAL_PING_INTERVAL": "0.3",
                                  "SIGNAL_PING_TIMEOUT": "0.2"}, env_file=None)
    assert (settings.ping_interval, settings.ping_timeout) == (0.3, 0.2)
    assert (Settings(jwt_secret=Secret(GOOD_SECRET)).ping_interval,
            Settings(jwt_secret=Secret(GOOD_SECRET)).ping_timeout) == (25.0, 20.0)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SIGNAL_JWT_SECRET": GOOD_SECRET, "SIGNAL_PING_INTERVAL": "0",
                           "SIGNAL_PING_TIMEOUT": "soon"}, env_file=None)
    assert caught.value.problems == [  # (what cannot be read comes first)
        "SIGNAL_PING_TIMEOUT must be a number of seconds from 0.1 to 600, got 'soon'.",
        "SIGNAL_PING_INTERVAL must be a number of seconds from 0.1 to 600, got 0.0.",
    ]
