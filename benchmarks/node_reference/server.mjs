// The Node socket.io 4.8 server the Python service is measured against: the same job, kept
// small. JWT (HS256, exp required) on connect from the auth payload or a Bearer header;
// JoinSocket/LeaveSocket for the caller's own room only; offer/answer/candidate/hangup
// validated ({to, ...} with the event's own field) and relayed to room "user:<to>" with a
// server-stamped `from`; acks {ok, delivered}. Usage: PORT=... SECRET=... node server.mjs
//
// TUNED=1: tuned the way its users tune it for this job — websocket transport only, no
// per-message deflate, the handshake request dropped once connected (`raw.request = null`,
// a known socket.io memory tip) and HS256 checked with Node's own crypto HMAC and
// timingSafeEqual instead of jsonwebtoken.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";
import jwt from "jsonwebtoken";

const tuned = process.env.TUNED === "1";

const port = Number(process.env.PORT || 9000);
const secret = process.env.SECRET;
const maxBytes = 65536;
const httpServer = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"status":"ok"}');
  } else {
    res.writeHead(404);
    res.end();
  }
});
const io = new Server(httpServer, {
  maxHttpBufferSize: maxBytes, cors: { origin: false },
  ...(tuned ? { transports: ["websocket"], perMessageDeflate: false } : {}),
});
if (tuned) io.engine.on("connection", (raw) => { raw.request = null; });

// HS256 with crypto: header.payload signed, the header's alg HS256, exp in the future
const key = Buffer.from(secret || "");
function verifyHs256(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("malformed");
  const header = JSON.parse(Buffer.from(parts[0], "base64url"));
  if (header.alg !== "HS256") throw new Error("alg");
  const mac = createHmac("sha256", key).update(`${parts[0]}.${parts[1]}`).digest();
  const sig = Buffer.from(parts[2], "base64url");
  if (sig.length !== mac.length || !timingSafeEqual(sig, mac)) throw new Error("signature");
  const claims = JSON.parse(Buffer.from(parts[1], "base64url"));
  if (typeof claims.exp !== "number" || claims.exp * 1000 <= Date.now()) throw new Error("exp");
  return claims;
}

io.use((socket, next) => {
  const header = socket.handshake.headers.authorization || "";
  const token = socket.handshake.auth?.token
    || (header.startsWith("Bearer ") ? header.slice(7) : null);
  if (!token) return next(Object.assign(new Error("unauthorized"), { data: { reason: "token_missing" } }));
  try {
    const claims = tuned ? verifyHs256(token) : jwt.verify(token, secret, { algorithms: ["HS256"] });
    if (typeof claims.sub !== "string" || !claims.sub || typeof claims.exp !== "number") throw new Error();
    socket.data.user = claims.sub;
    next();
  } catch {
    next(Object.assign(new Error("unauthorized"), { data: { reason: "token_invalid" } }));
  }
});

const userId = (v) => (typeof v === "number" && Number.isInteger(v) ? String(v) : v);
const validId = (v) => typeof v === "string" && v.length > 0 && v.length <= 256;
const fields = { offer: "offer", answer: "answer", candidate: "candidate", hangup: null };

io.on("connection", (socket) => {
  const room = (id) => `user:${id}`;
  const ack = (cb, value) => { if (typeof cb === "function") cb(value); };
  for (const [event, leave] of [["JoinSocket", false], ["LeaveSocket", true]]) {
    socket.on(event, (id, cb) => {
      if (userId(id) !== socket.data.user) return ack(cb, { ok: false, error: "forbidden" });
      leave ? socket.leave(room(id)) : socket.join(room(id));
      ack(cb, { ok: true });
    });
  }
  for (const [event, field] of Object.entries(fields)) {
    socket.on(event, (payload, cb) => {
      const to = userId(payload?.to);
      if (typeof payload !== "object" || payload === null || !validId(to)
          || (field && (typeof payload[field] !== "object" || payload[field] === null))) {
        return ack(cb, { ok: false, error: "invalid_payload" });
      }
      const target = io.sockets.adapter.rooms.get(room(to));
      const delivered = !!target && [...target].some((id) => id !== socket.id);
      if (delivered) socket.to(room(to)).emit(event, { ...payload, from: socket.data.user });
      ack(cb, { ok: true, delivered });
    });
  }
});

httpServer.listen(port, "127.0.0.1");
