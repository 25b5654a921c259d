// The official socket.io-client v4 against the running service. Started by
// tests/test_js_client.py, which passes SIGNAL_URL and tokens in the environment.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const URL = process.env.SIGNAL_URL;
const TOKENS = JSON.parse(process.env.SIGNAL_TOKENS);
const SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
const CANDIDATE = {
  candidate: "candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host",
  sdpMid: "0",
  sdpMLineIndex: 0,
  usernameFragment: "abcd",
};

function connect(token, { transport, mode }) {
  const options = { transports: [transport], reconnection: false, forceNew: true, timeout: 5000 };
  if (mode === "auth") options.auth = { token };
  else options.extraHeaders = { Authorization: `Bearer ${token}` };
  const socket = io(URL, options);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(err);
    });
  });
}

function next(socket, event, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    socket.once(event, (payload) => {
      clearTimeout(timer);
      resolve(payload);
    });
  });
}

for (const transport of ["websocket", "polling"]) {
  for (const mode of ["auth", "extraHeaders"]) {
    test(`a full call over ${transport} with the token in ${mode}`, async () => {
      const alice = await connect(TOKENS.alice, { transport, mode });
      const bob = await connect(TOKENS.bob, { transport, mode });
      try {
        assert.equal(alice.io.engine.transport.name, transport);
        assert.deepEqual(await alice.timeout(3000).emitWithAck("JoinSocket", "alice"), { ok: true });
        assert.deepEqual(await bob.timeout(3000).emitWithAck("JoinSocket", "bob"), { ok: true });

        const stranger = await bob.timeout(3000).emitWithAck("candidate", { to: "alice", candidate: CANDIDATE });
        assert.deepEqual(stranger, { ok: false, error: "not_in_call" });

        const offered = next(bob, "offer");
        const ack = await alice.timeout(3000).emitWithAck("offer", {
          to: "bob", from: "mallory", offer: { type: "offer", sdp: SDP },
        });
        const callId = ack.callId;
        assert.equal(typeof callId, "string");
        assert.deepEqual(ack, { ok: true, delivered: true, callId });
        const { seq: offerSeq, ...offer } = await offered;   // seq: stamped by the service
        assert.equal(offerSeq, 1);
        assert.deepEqual(offer, {
          to: "bob", from: "alice", offer: { type: "offer", sdp: SDP }, callId,
        });

        const answered = next(alice, "answer");
        await bob.timeout(3000).emitWithAck("answer", { to: "alice", callId, answer: { type: "answer", sdp: SDP } });
        assert.equal((await answered).from, "bob");
        assert.equal((await answered).callId, callId);

        const candidates = next(bob, "candidate");
        alice.emit("candidate", { to: "bob", candidate: CANDIDATE });
        assert.deepEqual((await candidates).candidate, CANDIDATE);

        const bad = await alice.timeout(3000).emitWithAck("offer", { to: "bob", offer: "nope" });
        assert.equal(bad.ok, false);
        assert.equal(bad.error, "invalid_payload");

        const foreign = await alice.timeout(3000).emitWithAck("JoinSocket", "bob");
        assert.equal(foreign.error, "forbidden");

        const hungUp = next(bob, "hangup");
        await alice.timeout(3000).emitWithAck("hangup", { to: "bob" });
        const { seq: hangupSeq, ...hangup } = await hungUp;
        assert.ok(hangupSeq > offerSeq);
        assert.deepEqual(hangup, { to: "bob", from: "alice", callId });
      } finally {
        alice.close();
        bob.close();
      }
    });

    test(`refusals reach connect_error over ${transport} with ${mode}`, async () => {
      await assert.rejects(connect(TOKENS.expired, { transport, mode }), (err) => {
        assert.equal(err.message, "unauthorized");
        assert.deepEqual(err.data, { reason: "token_expired" });
        return true;
      });
      await assert.rejects(connect("not-a-jwt", { transport, mode }), (err) => {
        assert.equal(err.message, "unauthorized");
        assert.deepEqual(err.data, { reason: "token_invalid" });
        return true;
      });
    });
  }
}

test("no token at all is token_missing", async () => {
  const socket = io(URL, { transports: ["websocket"], reconnection: false, forceNew: true });
  const err = await next(socket, "connect_error");
  socket.close();
  assert.equal(err.message, "unauthorized");
  assert.deepEqual(err.data, { reason: "token_missing" });
});

test("a URL with a path (an unknown namespace) is refused with a reason", async () => {
  // io("http://host/app") connects to the namespace "/app": the service serves "/" only
  const socket = io(`${URL}/app`, {
    transports: ["websocket"], reconnection: false, forceNew: true, auth: { token: TOKENS.alice },
  });
  const err = await next(socket, "connect_error");
  socket.close();
  assert.match(err.message, /^unknown namespace/);
  assert.deepEqual(err.data, { reason: "unknown_namespace" });
});

test("a client cut off reconnects by itself and, joining on every connect, is called again", async () => {
  // the README's example, behind a TCP proxy this test cuts (a network switch, a node gone)
  const net = await import("node:net");
  const target = new globalThis.URL(URL);
  const pipes = new Set();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    client.pipe(upstream).pipe(client);
    for (const s of [client, upstream]) {
      pipes.add(s);
      s.on("error", () => {});
      s.on("close", () => pipes.delete(s));
    }
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const bob = io(`http://127.0.0.1:${proxy.address().port}`, {
    auth: { token: TOKENS.bob }, transports: ["websocket"], forceNew: true,
    reconnectionDelay: 100, reconnectionDelayMax: 500,
  });
  let joins = 0;
  bob.on("connect", () => {                 // the example: join on every connect
    bob.emitWithAck("JoinSocket", "bob").then(() => { joins += 1; });
  });
  const until = async (check, ms) => {
    for (const end = Date.now() + ms; !check(); await new Promise((r) => setTimeout(r, 20))) {
      if (Date.now() > end) throw new Error("not in time");
    }
  };
  const alice = await connect(TOKENS.alice, { transport: "websocket", mode: "auth" });
  try {
    await until(() => joins === 1, 5000);
    for (const s of pipes) s.destroy();       // the connection is cut
    await until(() => joins === 2, 10000);    // socket.io-client came back by itself
    const offered = next(bob, "offer");
    const ack = await alice.timeout(3000).emitWithAck("offer", { to: "bob", offer: { type: "offer", sdp: SDP } });
    assert.equal(ack.delivered, true);
    assert.equal((await offered).from, "alice");
    await alice.timeout(3000).emitWithAck("hangup", { to: "bob" });
  } finally {
    alice.close();
    bob.close();
    proxy.close();
  }
});

test("a half-dead socket: the app claims its call on a new socket, drops repeats by seq, and a retried signalId is relayed once", async () => {
  // bob's first socket goes through a proxy this test freezes (reads stop both ways, nothing
  // is closed: a phone switching networks); his app connects again and claims the call
  const net = await import("node:net");
  const target = new globalThis.URL(URL);
  const held = [];
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    client.pipe(upstream).pipe(client);
    for (const s of [client, upstream]) {
      held.push(s);
      s.on("error", () => {});
    }
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const alice = await connect(TOKENS.alice, { transport: "websocket", mode: "auth" });
  const oldBob = io(`http://127.0.0.1:${proxy.address().port}`, {
    auth: { token: TOKENS.bob }, transports: ["websocket"], forceNew: true, reconnection: false,
  });
  let newBob;
  try {
    await next(oldBob, "connect");
    await alice.timeout(3000).emitWithAck("JoinSocket", "alice");
    await oldBob.timeout(3000).emitWithAck("JoinSocket", "bob");
    // the app's bookkeeping: the highest seq handled per call, repeats dropped
    const handled = new Map();
    const got = [];
    const handle = (event) => (message) => {
      if (message.seq <= (handled.get(message.callId) ?? 0)) return;   // a repeat
      handled.set(message.callId, message.seq);
      got.push([event, message.candidate?.candidate ?? message[event]?.type]);
    };
    for (const event of ["offer", "candidate"]) oldBob.on(event, handle(event));
    const offered = next(oldBob, "offer");
    const { callId } = await alice.timeout(3000).emitWithAck("offer", { to: "bob", offer: { type: "offer", sdp: SDP } });
    await offered;
    await oldBob.timeout(3000).emitWithAck("answer", { to: "alice", callId, answer: { type: "answer", sdp: SDP } });
    const first = next(oldBob, "candidate");
    await alice.timeout(3000).emitWithAck("candidate", { to: "bob", candidate: { ...CANDIDATE, candidate: "candidate:0 x" } });
    await first;

    for (const s of held) s.pause();         // silent both ways, not closed
    const sent = [];
    for (let n = 1; n <= 3; n++) {
      const signal = { to: "bob", signalId: `c${n}`, candidate: { ...CANDIDATE, candidate: `candidate:${n} x` } };
      const ack = await alice.timeout(3000).emitWithAck("candidate", signal);
      assert.deepEqual(ack, { ok: true, delivered: true });
      sent.push(`candidate:${n} x`);
      // a retry (a lost ack, an offline buffer replayed): acked like the first, not relayed
      assert.deepEqual(await alice.timeout(3000).emitWithAck("candidate", signal), ack);
    }

    newBob = await connect(TOKENS.bob, { transport: "websocket", mode: "auth" });
    for (const event of ["offer", "candidate"]) newBob.on(event, handle(event));
    // claim, then join. lastSeq 0 asks for everything the outbox keeps (what was written to
    // the call's device since the answer): candidate 0, which the old socket got, comes
    // again, then 1-3
    const claim = await newBob.timeout(3000).emitWithAck("ClaimCall", { callId, lastSeq: 0 });
    assert.deepEqual(claim, { ok: true, replayed: 4 });
    await newBob.timeout(3000).emitWithAck("JoinSocket", "bob");
    const until = async (check, ms) => {
      for (const end = Date.now() + ms; !check(); await new Promise((r) => setTimeout(r, 20))) {
        if (Date.now() > end) throw new Error(`not in time: ${JSON.stringify(got)}`);
      }
    };
    await until(() => got.length === 5, 5000);
    assert.deepEqual(got, [["offer", "offer"], ["candidate", "candidate:0 x"],
      ...sent.map((c) => ["candidate", c])]);                 // each once, in order
    assert.equal((await alice.timeout(3000).emitWithAck("hangup", { to: "bob", callId })).delivered, true);
  } finally {
    alice.close();
    oldBob.close();
    newBob?.close();
    for (const s of held) s.destroy();
    proxy.close();
  }
});
