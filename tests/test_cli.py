"""The two entry points as an operator uses them: ``sanic service.app`` and
``scripts/mint_token.py``, in real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from service.auth import TokenVerifier
from service.auth.cli import main as mint_main
from service.config import Settings
from tests.support import SECRET, Peer, free_socket
from tests.test_relay import SDP

ROOT = Path(__file__).resolve().parent.parent
SANIC = str(Path(sys.executable).with_name("sanic"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty directory with a ``.env``, and no SIGNAL_ variables inherited."""
    for name in list(os.environ):
        if name.startswith("SIGNAL_"):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(f"SIGNAL_JWT_SECRET={SECRET}\nSIGNAL_JWT_ISSUER=dev\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNAL_")}
    env.update(extra)
    return env


async def test_mint_prints_a_token_the_service_accepts(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``main([USER_ID, --ttl])`` prints, as its last line, a token that verifies with the
    settings from ``.env`` (issuer included) and lives ``--ttl`` seconds."""
    assert mint_main(["alice", "--ttl", "120"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    identity = await TokenVerifier(Settings.from_env()).verify(token)
    assert identity.user_id == "alice"
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "dev"
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("argv", [["alice", "--ttl", "0"], ["bad\nid"], [],
                                  ["alice", "--alg", "none"]])
def test_mint_refuses_bad_arguments(workdir: Path, argv: list[str]) -> None:
    """A non-positive ttl, an unusable user id, or no user id exits with usage status 2."""
    with pytest.raises(SystemExit) as caught:
        mint_main(argv)
    assert caught.value.code == 2


def test_mint_without_settings_explains(workdir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Without a secret the script says which variable is missing and prints no token."""
    (workdir / ".env").unlink()
    assert mint_main(["alice"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "No key to verify tokens with: set SIGNAL_JWT_SECRET" in captured.err


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    url: str
    lines: list[str]


async def _start(workdir: Path, *args: str) -> Process:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = await asyncio.create_subprocess_exec(
        SANIC, "service.app", "--host", "127.0.0.1", "--port", str(port), *args,
        cwd=workdir, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    running = Process(proc, f"http://127.0.0.1:{port}", [])

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            running.lines.append(raw.decode(errors="replace").rstrip())

    asyncio.get_running_loop().create_task(pump())
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{running.url}/healthz") as response:
                    if response.status == 200:
                        return running
            except aiohttp.ClientError:
                pass
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("service did not start:\n" + "\n".join(running.lines))


@pytest.fixture
async def sanic_process(workdir: Path) -> AsyncIterator[Process]:
    running = await _start(workdir)
    yield running
    if running.proc.returncode is None:
        os.killpg(running.proc.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(running.proc.wait(), 10)
        except TimeoutError:
            os.killpg(running.proc.pid, signal.SIGKILL)
            await running.proc.wait()


async def _mint(workdir: Path, user: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "mint_token.py"), user, cwd=workdir,
        env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip().splitlines()[-1]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_sanic_cli_serves_a_call_with_minted_tokens(workdir: Path, sanic_process: Process,
                                                          transport: str) -> None:
    """``sanic service.app`` started from a directory with a ``.env`` accepts tokens from
    ``scripts/mint_token.py``; two clients exchange an offer; the process logs JSON lines
    without tokens or SDP."""
    tokens = {user: await _mint(workdir, user) for user in ("alice", "bob")}
    alice, bob = Peer(sanic_process.url, transport), Peer(sanic_process.url, transport)
    try:
        for user, peer in (("alice", alice), ("bob", bob)):
            await peer.connect(tokens[user])
            assert await peer.call("JoinSocket", user) == {"ok": True}
        offer = {"to": "bob", "offer": {"type": "offer", "sdp": SDP}}
        ack = await alice.call("offer", offer)
        assert ack == {"ok": True, "delivered": True, "callId": ack["callId"]}
        assert (await bob.next("offer"))["from"] == "alice"
    finally:
        await alice.close()
        await bob.close()
    for _ in range(100):
        if sum('"event": "disconnect"' in line for line in sanic_process.lines) == 2:
            break
        await asyncio.sleep(0.05)
    records = [json.loads(line) for line in sanic_process.lines if line.startswith("{")]
    assert [r["user"] for r in records if r["event"] == "connect"] == ["alice", "bob"]
    assert sum(r["event"] == "disconnect" for r in records) == 2
    output = "\n".join(sanic_process.lines)
    assert tokens["alice"] not in output and tokens["bob"] not in output
    assert "a=rtpmap" not in output


async def test_bad_settings_stop_startup_naming_the_variable(workdir: Path) -> None:
    """A short secret stops ``sanic service.app`` with a message that names the variable and
    does not print the secret."""
    (workdir / ".env").write_text("SIGNAL_JWT_SECRET=hunter2\nSIGNAL_JWT_LEEWAY=later\n")
    proc = await asyncio.create_subprocess_exec(
        SANIC, "service.app", "--port", "1", cwd=workdir, env=_clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode != 0
    assert "SIGNAL_JWT_SECRET is too short" in text
    assert "SIGNAL_JWT_LEEWAY" in text
    assert "hunter2" not in text


async def _peers_call(workdir: Path, sanic_process: Process, *bob_does: str
                      ) -> tuple[str, str]:
    """``peer.py wait`` (with ``bob_does``) as bob, then ``peer.py call bob`` as alice, with
    tokens from ``mint_token.py``; both must finish successfully. Their outputs."""
    peer = [sys.executable, str(ROOT / "scripts" / "peer.py"), "--url", sanic_process.url,
            "--wait", "20"]
    bob = await asyncio.create_subprocess_exec(
        *peer, "--token", await _mint(workdir, "bob"), "wait", *bob_does, env=_clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert bob.stdout is not None
    first = await asyncio.wait_for(bob.stdout.readline(), 20)
    assert b"joined: {'ok': True}" in first
    assert b"waiting for a call" in await asyncio.wait_for(bob.stdout.readline(), 20)
    alice = await asyncio.create_subprocess_exec(
        *peer, "--token", await _mint(workdir, "alice"), "call", "bob", env=_clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    alice_out, _ = await asyncio.wait_for(alice.communicate(), 30)
    bob_rest, _ = await asyncio.wait_for(bob.communicate(), 30)
    alice_text, bob_text = alice_out.decode(), bob_rest.decode()
    assert alice.returncode == 0, alice_text
    assert bob.returncode == 0, bob_text
    return alice_text, bob_text


async def test_readme_walkthrough_two_peers_call(workdir: Path, sanic_process: Process) -> None:
    """The README's try-it flow: ``peer.py wait`` as bob, ``peer.py call bob`` as alice, with
    tokens from ``mint_token.py``; both finish successfully and print each step."""
    alice_text, bob_text = await _peers_call(workdir, sanic_process)
    assert "offer to bob: delivered, call " in alice_text
    assert "answer from bob" in alice_text
    assert "offer from alice; answering" in bob_text
    assert "hangup from alice" in bob_text


async def test_peer_reports_an_offline_callee(workdir: Path, sanic_process: Process) -> None:
    """Calling a user nobody is signed in as says so; the call rings on (here: longer than
    the peer waits, which then exits 1)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "peer.py"), "--url", sanic_process.url,
        "--wait", "2", "--token", await _mint(workdir, "alice"), "call", "nobody",
        env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "nobody is not online; call " in out.decode()
    assert "rings until they join" in out.decode()


@pytest.mark.parametrize("bob_does", ["--decline", "--drop"])
async def test_peer_declines_or_drops_and_comes_back(workdir: Path, sanic_process: Process,
                                                     bob_does: str) -> None:
    """``peer.py wait --decline``: alice hears the call was declined. ``wait --drop 2``: bob
    loses his connection after the offer, comes back, gets the offer again (it rings on),
    drops it as a repeat by its seq, claims the call, answers, and the call goes through."""
    option = [bob_does] if bob_does == "--decline" else [bob_does, "2"]
    alice_text, bob_text = await _peers_call(workdir, sanic_process, *option)
    if bob_does == "--decline":
        assert "declining" in bob_text
        assert "hangup from bob" in alice_text
    else:
        assert "dropping the connection for 2 s" in bob_text
        # the offer rang on while he was away: it comes again, and he tells it by its seq
        assert "offer from alice again (seq 1): a repeat, dropped" in bob_text
        assert "claimed call " in bob_text
        assert "answer from bob" in alice_text and "hung up" in alice_text


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_mint_signs_like_an_identity_provider(workdir: Path, alg: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--alg`` creates a key pair in ``--key-dir`` (reused next time), writes the public key
    as PEM and JWKS, and the token verifies through either, with --iss/--aud/--claim set."""
    from service.config import JwksEndpoint
    from tests.idp import JwksServer

    key_dir = workdir / "keys"
    argv = ["alice", "--alg", alg, "--key-dir", str(key_dir), "--iss", "https://idp.test/",
            "--aud", "calls", "--claim", 'jti="j-1"', "--claim", "tier=2", "--ttl", "300"]
    assert mint_main(argv) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert mint_main(argv) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1]
    import jwt

    assert jwt.get_unverified_header(first)["kid"] == jwt.get_unverified_header(second)["kid"]
    claims = jwt.decode(first, options={"verify_signature": False})
    assert (claims["iss"], claims["aud"], claims["jti"], claims["tier"]) == (
        "https://idp.test/", "calls", "j-1", 2)
    assert oct((key_dir / f"{alg}.pem").stat().st_mode)[-3:] == "600"

    by_pem = Settings(jwt_public_keys=((key_dir / f"{alg}.pub.pem").read_text(),),
                      jwt_issuers=("https://idp.test/",), jwt_audiences=("calls",))
    identity = await TokenVerifier(by_pem).verify(first)
    assert (identity.user_id, identity.jti) == ("alice", "j-1")

    server = JwksServer()
    await server.start()
    try:
        server.documents["idp"] = json.loads((key_dir / "jwks.json").read_text())
        by_jwks = Settings(jwt_jwks=(JwksEndpoint("https://idp.test/", server.url("idp")),),
                           jwt_audiences=("calls",))
        assert (await TokenVerifier(by_jwks).verify(second)).user_id == "alice"
    finally:
        await server.stop()


# ---- dev tokens stay on the developer's machine (issue 9, item 9) ----

async def test_dev_tokens_refuse_a_public_address(workdir: Path) -> None:
    """With SIGNAL_DEMO_TOKENS on, ``sanic service.app --host 0.0.0.0`` refuses to start,
    naming the setting; on 127.0.0.1 it starts and warns in its log."""
    env = _clean_env(SIGNAL_DEMO="true", SIGNAL_DEMO_TOKENS="true")
    proc = await asyncio.create_subprocess_exec(
        SANIC, "service.app", "--host", "0.0.0.0", "--port", "1", cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert "SIGNAL_DEMO_TOKENS=true while listening on 0.0.0.0" in out.decode()
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = await asyncio.create_subprocess_exec(
        SANIC, "service.app", "--host", "127.0.0.1", "--port", str(port), cwd=workdir,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.stdout is not None
        warned = ready = False
        while not (warned and ready):  # (a SIGINT before "Worker ready" stalls Sanic)
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "the service stopped"
            warned = warned or '"event": "demo_tokens_enabled"' in line
            ready = ready or "Worker ready" in line
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/demo/token?user=alice"
            async with http.get(url) as response:
                assert response.status == 200
            async with http.get(url, headers={"X-Forwarded-For": "203.0.113.9"}) as response:
                assert response.status == 403  # a local proxy forwarding someone else
            async with http.get(url, headers={"Forwarded": "for=203.0.113.9"}) as response:
                assert response.status == 403
    finally:
        # this test is not about shutting down: Sanic's main process can stall for good on a
        # SIGINT that arrives while it still waits for its worker's ack, just after start-up
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 20)


def test_scripts_run_keeps_dev_tokens_out_of_env(tmp_path: Path) -> None:
    """scripts/run writes only the development secret into .env: a later production start
    from the same checkout does not inherit the demo or its dev tokens."""
    text = (ROOT / "scripts" / "run").read_text()
    written = text.split("> .env", 1)[0].rsplit("printf", 1)[1]
    assert "SIGNAL_JWT_SECRET" in written
    assert "DEMO" not in written
    assert 'export SIGNAL_DEMO_TOKENS="${SIGNAL_DEMO_TOKENS:-true}"' in text
