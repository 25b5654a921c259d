// The load generator of benchmarks/versus_node.py: raw Engine.IO 4 / Socket.IO 5 clients over
// `ws`, one Node process (a compiled-speed client, so that the servers, not the generator, are
// the bottleneck). Driven over stdin/stdout, one JSON object per line:
//   node load.mjs URL            then commands on stdin:
//   {"cmd":"connect","tokens":[...],"inflight":100}
//                           -> {"ids":[... null where it failed],"times_ms":[...],"failed":n}
//   {"cmd":"relay","senders":[ids],"receivers":[ids],"to":[users],"depth":4,"seconds":5,"pad":0}
//                                              -> {"done":n,"refused":n,"seconds":s}
//   {"cmd":"fixed","senders":[...],"receivers":[...],"to":[...],"rate":1000,"seconds":5}
//                                                -> {"delivered":n,"latencies_ms":[sorted]}
//   {"cmd":"close","ids":[...]}                                    -> {"closed":n}
//   {"cmd":"join","ids":[...],"users":[...]}                        -> {"joined":n}
// Each connection answers the server's pings. Payloads: an ICE candidate (200 B) plus `pad`.
import WebSocket from "ws";
import { createInterface } from "node:readline";

const url = process.argv[2].replace(/^http/, "ws") + "/socket.io/?EIO=4&transport=websocket";
const CANDIDATE = {
  candidate: "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.2 "
    + "rport 46154 generation 0",
  sdpMid: "0", sdpMLineIndex: 0,
};
const conns = new Map();
let nextConn = 0;

class Conn {
  constructor(ws) {
    this.ws = ws;
    this.nextAck = 0;
    this.acks = new Map();
    this.onEvent = null;
    ws.on("message", (raw) => this.frame(raw.toString()));
  }
  frame(text) {
    if (text === "2") this.ws.send("3");
    else if (text.startsWith("43")) {
      const at = text.indexOf("[");
      const id = Number(text.slice(2, at));
      const done = this.acks.get(id);
      if (done) { this.acks.delete(id); done(JSON.parse(text.slice(at))[0]); }
    } else if (text.startsWith("42") && this.onEvent) {
      const [event, data] = JSON.parse(text.slice(2));
      this.onEvent(event, data);
    }
  }
  call(event, data) {
    const id = ++this.nextAck;
    return new Promise((resolve) => {
      this.acks.set(id, resolve);
      this.ws.send(`42${id}` + JSON.stringify([event, data]));
    });
  }
}

function open(token) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let stage = 0;
    const timer = setTimeout(() => { ws.terminate(); reject(new Error("timeout")); }, 30000);
    ws.on("error", (error) => { clearTimeout(timer); reject(error); });
    ws.on("message", function first(raw) {
      const text = raw.toString();
      if (stage === 0 && text.startsWith("0")) {
        stage = 1;
        ws.send("40" + JSON.stringify({ token }));
      } else if (stage === 1 && text.startsWith("40")) {
        clearTimeout(timer);
        ws.off("message", first);
        ws.removeAllListeners("error");
        const conn = new Conn(ws);
        const id = nextConn++;
        conns.set(id, conn);
        resolve([id, performance.now() - started]);
      } else if (stage === 1 && text.startsWith("44")) {
        reject(new Error("refused: " + text));
      }
    });
  });
}

async function connect({ tokens, inflight }) {
  const ids = new Array(tokens.length).fill(null);  // in token order; null: failed
  const times = [];
  let next = 0;
  let failed = 0;
  async function lane() {
    while (next < tokens.length) {
      const n = next++;
      try {
        const [id, took] = await open(tokens[n]);
        ids[n] = id;
        times.push(took);
      } catch {
        failed++;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(inflight, tokens.length) }, lane));
  return { ids, times_ms: times, failed };
}

async function join({ ids, users }) {
  const acks = await Promise.all(ids.map((id, n) => conns.get(id).call("JoinSocket", users[n])));
  if (!acks.every((a) => a.ok)) throw new Error("join refused: " + JSON.stringify(acks));
  return { joined: ids.length };
}

// Each sender calls its receiver (offer, answered): relays are signals within a call, as in
// a real call (the Python service refuses them otherwise; the Node reference ignores it).
async function calls({ senders, receivers, from, to }) {
  const sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
  const offers = await Promise.all(senders.map((id, n) => conns.get(id).call("offer",
    { to: to[n], offer: { type: "offer", sdp } })));
  if (!offers.every((a) => a.ok)) throw new Error("offer refused: " + JSON.stringify(offers));
  const answers = await Promise.all(receivers.map((id, n) => conns.get(id).call("answer",
    { to: from[n], answer: { type: "answer", sdp } })));
  if (!answers.every((a) => a.ok)) throw new Error("answer refused: " + JSON.stringify(answers));
  return { calls: senders.length };
}

async function relay({ senders, to, depth, seconds, pad }) {
  const message = (n) => {
    const m = { to: to[n], candidate: CANDIDATE };
    if (pad) m.pad = "x".repeat(pad);
    return m;
  };
  let done = 0;
  let refused = 0;
  const started = performance.now();
  const stopAt = started + seconds * 1000;
  async function pump(n) {
    const conn = conns.get(senders[n]);
    const m = message(n);
    while (performance.now() < stopAt) {
      const ack = await conn.call("candidate", m);
      if (ack.delivered === true) done++;
      else refused++;
    }
  }
  const lanes = [];
  for (let n = 0; n < senders.length; n++) for (let d = 0; d < depth; d++) lanes.push(pump(n));
  await Promise.all(lanes);
  return { done, refused, seconds: (performance.now() - started) / 1000 };
}

async function fixed({ senders, receivers, to, rate, seconds }) {
  const latencies = [];
  for (const id of receivers) {
    conns.get(id).onEvent = (event, data) => latencies.push(performance.now() - data.t);
  }
  const total = Math.round(rate * seconds);
  const started = performance.now();
  const pending = [];
  for (let n = 0; n < total; n++) {
    const due = started + (n * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const k = n % senders.length;
    pending.push(conns.get(senders[k]).call("candidate",
      { to: to[k], candidate: CANDIDATE, t: performance.now() }));
  }
  await Promise.all(pending);
  const deadline = performance.now() + 5000;
  while (latencies.length < total && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
  }
  for (const id of receivers) conns.get(id).onEvent = null;
  latencies.sort((a, b) => a - b);
  return { delivered: latencies.length, latencies_ms: latencies };
}

async function close({ ids }) {
  await Promise.all(ids.map((id) => new Promise((resolve) => {
    const conn = conns.get(id);
    conns.delete(id);
    if (!conn || conn.ws.readyState === WebSocket.CLOSED) return resolve();
    conn.ws.once("close", resolve);
    conn.ws.close();
  })));
  return { closed: ids.length };
}

const commands = { connect, join, calls, relay, fixed, close };
const input = createInterface({ input: process.stdin });
for await (const line of input) {
  const request = JSON.parse(line);
  try {
    const result = await commands[request.cmd](request);
    process.stdout.write(JSON.stringify(result) + "\n");
  } catch (error) {
    process.stdout.write(JSON.stringify({ error: String(error) }) + "\n");
  }
}
process.exit(0);
