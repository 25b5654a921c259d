// The demo page: connect with a token, join your room, call another user id, see both videos.
// Plain JavaScript on the official socket.io-client v4 browser build (served beside this
// file) and the standard WebRTC APIs. window.demo exposes the state for tests.
"use strict";

const $ = (id) => document.getElementById(id);
const REFUSALS = {
  token_missing: "No token was sent.",
  token_invalid: "The token is invalid (wrong signature, issuer, audience or format).",
  token_expired: "The token has expired: get a new one.",
  token_not_yet_valid: "The token is not valid yet: check this device's clock.",
  token_revoked: "The token has been revoked: sign in again.",
  rate_limited: "Too many attempts from here: wait a little and try again.",
  too_many_connections: "You are connected on too many devices.",
  unavailable: "The service is temporarily unavailable: try again shortly.",
  shutting_down: "The server is restarting: reconnecting…",
};
const ERRORS = {
  invalid_payload: "The message was malformed.",
  forbidden: "Not allowed.",
  rate_limited: "Slow down: too many messages.",
  unavailable: "The service is temporarily unavailable; nothing was sent.",
  shutting_down: "The server is restarting; try again in a moment.",
  unknown_event: "The server does not know this message.",
  not_in_call: "That call is over.",
  busy: "is in another call.",
  glare: "is calling you at the same moment.",
};
// why the service ended a call (hangup it originates)
const ENDED = {
  timeout: (peer) => `${peer} did not answer.`,
  answered_elsewhere: () => "Answered on another of your devices.",
  declined_elsewhere: () => "Declined on another of your devices.",
  peer_gone: (peer) => `${peer} lost their connection.`,
  busy: (peer) => `${peer} is in another call.`,
};

const demo = {
  socket: null, pc: null, me: null, peer: null, local: null, pending: [], incoming: null,
  // the call this page is in (or being offered), and whether this side has answered
  callId: null, answered: false, outbox: [],
  // the highest seq handled per call: a message at or below it is a repeat (a claim after a
  // reconnect sends again what the earlier socket may have lost)
  lastSeq: {},
  config: { devTokens: false, userClaim: "sub" },
  state: { signaling: "disconnected", call: "idle", ice: null, pc: null, error: null,
           refusal: null, ended: null },
  timings: [], log: [],
};
window.demo = demo;

function log(text) {
  const line = `${new Date().toISOString().slice(11, 23)} ${text}`;
  demo.log.push(line);
  $("log").textContent = demo.log.slice(-60).join("\n");
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  if (error) demo.state.error = text;
  log(text);
}

function setState(key, value) {
  demo.state[key] = value;
  const el = { signaling: "signaling", call: "call-state", ice: "ice-state", pc: "pc-state" }[key];
  if (el) $(el).textContent = value ?? "–";
}

function controls() {
  const connected = demo.state.signaling === "connected";
  $("peer").disabled = !connected;
  $("call").disabled = !connected || demo.pc !== null;
  $("hangup").disabled = demo.pc === null;
}

function userOf(token) {
  try {
    const body = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(body + "=".repeat((4 - (body.length % 4)) % 4)));
    return String(claims[demo.config.userClaim]);
  } catch {
    return null;
  }
}

async function loadConfig() {
  try {
    const response = await fetch("config");
    if (response.ok) demo.config = await response.json();
  } catch { /* defaults */ }
  $("dev-token").hidden = !demo.config.devTokens;
}

async function devToken() {
  const user = $("dev-user").value.trim();
  if (!user) return status("Enter a user id first.", true);
  const response = await fetch(`token?user=${encodeURIComponent(user)}`);
  if (!response.ok) return status("Could not get a development token.", true);
  $("token").value = (await response.json()).token;
  status(`Got a development token for ${user}.`);
}

function connect() {
  const token = $("token").value.trim();
  if (demo.socket) demo.socket.close();
  demo.me = userOf(token);
  $("me").textContent = demo.me ?? "–";
  demo.state.refusal = null;
  const socket = io({ auth: (cb) => cb({ token: $("token").value.trim() }),
                      transports: ["websocket", "polling"], tryAllTransports: true });
  demo.socket = socket;
  setState("signaling", "connecting");
  socket.on("connect", async () => {
    setState("signaling", "connected");
    // back in a call: claim it before joining (a join would hand over what was held for us
    // first, ahead of what the claim sends again: claimed first, everything comes in order)
    const inCall = demo.callId && (demo.pc || demo.incoming);
    if (inCall) await claim(socket);
    const ack = await socket.timeout(5000).emitWithAck("JoinSocket", demo.me);
    if (!ack.ok) status(`Could not join your room: ${ERRORS[ack.error] ?? ack.error}`, true);
    else if (!inCall) status(`Connected as ${demo.me}. Waiting for calls.`);
    controls();
  });
  socket.on("connect_error", (err) => {
    const reason = err.data?.reason;
    demo.state.refusal = reason ?? err.message;
    setState("signaling", "refused");
    status(`Connection refused: ${REFUSALS[reason] ?? err.message}`, true);
    socket.close();
    controls();
  });
  socket.on("disconnect", (reason) => {
    setState("signaling", "disconnected");
    if (reason !== "io client disconnect") log(`signaling disconnected (${reason})`);
    // the service holds the call's signals for a while: reconnecting and joining gets them
    if (demo.pc || demo.incoming) status("Reconnecting… the call is kept for a few seconds.");
    controls();
  });
  socket.on("server_disconnect", ({ reason }) => {
    status(`The server closed the connection: ${REFUSALS[reason] ?? reason}`, reason !== "shutting_down");
  });
  socket.on("token_expiring", async ({ expires_in }) => {
    if (!demo.config.devTokens) return status(`Your token expires in ${expires_in} s.`, true);
    const response = await fetch(`token?user=${encodeURIComponent(demo.me)}`);
    const { token } = await response.json();
    const ack = await socket.timeout(5000).emitWithAck("RefreshToken", token);
    log(ack.ok ? "token refreshed" : `token refresh refused: ${ack.error}`);
  });
  socket.on("offer", once(onOffer));
  socket.on("answer", once(onAnswer));
  socket.on("candidate", once(onCandidate));
  socket.on("hangup", once(onHangup));
  socket.on("ice_servers", ({ iceServers }) => {
    // fresh TURN credentials, before ours expire: the next ICE restart uses them
    if (demo.pc) demo.pc.setConfiguration({ ...demo.pc.getConfiguration(), iceServers });
  });
}

function once(handler) {
  // drop a message of a call whose seq was handled already
  return (message) => {
    const { callId, seq } = message;
    if (callId !== undefined && seq !== undefined) {
      if (seq <= (demo.lastSeq[callId] ?? 0)) return log(`a repeat (seq ${seq}) dropped`);
      demo.lastSeq[callId] = seq;
    }
    return handler(message);
  };
}

async function claim(socket) {
  // back after a reconnect (a network switch may have left the old socket half-dead): take
  // the call over on this socket and get again what the old one may not have received
  const callId = demo.callId;
  const ack = await socket.timeout(5000).emitWithAck("ClaimCall",
    { callId, lastSeq: demo.lastSeq[callId] ?? 0 });
  if (ack.ok) status(`Back in the call (${ack.replayed} signals caught up).`);
  else if (ack.error === "not_in_call") endCall("The call ended while you were away.");
}

function reconnectNow() {
  // the network changed: do not wait for the old connection's ping timeout
  if (demo.socket?.connected) demo.socket.io.engine.close();
}
demo.reconnectNow = reconnectNow;
window.addEventListener("online", reconnectNow);

async function restartIce() {
  // a new ICE negotiation inside the call (a changed network on either side)
  if (!demo.pc || !demo.peer) return;
  demo.pc.restartIce();
  await demo.pc.setLocalDescription(await demo.pc.createOffer());
  demo.socket.emit("offer", { to: demo.peer, callId: demo.callId,
                              offer: demo.pc.localDescription.toJSON() });
}
demo.restartIce = restartIce;

async function media() {
  if (!demo.local) {
    demo.local = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    $("local").srcObject = demo.local;
  }
  return demo.local;
}

async function iceServers() {
  // STUN, and TURN with credentials minted for us (expiring with our token)
  try {
    const ack = await demo.socket.timeout(5000).emitWithAck("GetIceServers");
    if (ack.ok) return ack.iceServers;
  } catch { /* no answer: host candidates only */ }
  return [];
}

async function newPeerConnection(peer) {
  const relayOnly = $("relay-only").checked;
  const pc = new RTCPeerConnection({ iceServers: await iceServers(),
                                     iceTransportPolicy: relayOnly ? "relay" : "all" });
  demo.pc = pc;
  demo.peer = peer;
  for (const track of (await media()).getTracks()) pc.addTrack(track, demo.local);
  pc.onicecandidate = ({ candidate }) => {
    if (!candidate) return;
    const message = { to: peer, callId: demo.callId, candidate: candidate.toJSON() };
    // the callee's candidates follow its answer (the service refuses them before)
    if (demo.answered) demo.socket.emit("candidate", message);
    else demo.outbox.push(message);
  };
  pc.ontrack = ({ streams }) => { $("remote").srcObject = streams[0]; };
  pc.oniceconnectionstatechange = () => setState("ice", pc.iceConnectionState);
  pc.onsignalingstatechange = () => log(`signaling state ${pc.signalingState}`);
  pc.onconnectionstatechange = () => {
    setState("pc", pc.connectionState);
    if (pc.connectionState === "connected") {
      const started = demo.timings.at(-1);
      if (started && started.connectedAt === undefined) {
        started.connectedAt = performance.now();
        started.setupMs = Math.round(started.connectedAt - started.offerAt);
      }
      setState("call", "in call");
      status(`In a call with ${peer}.`);
    } else if (pc.connectionState === "failed") {
      endCall("The call could not connect (no network path between you).", true);
    }
  };
  $("remote-caption").textContent = peer;
  controls();
  return pc;
}

async function call() {
  const peer = $("peer").value.trim();
  if (!peer) return status("Enter the user id to call.", true);
  try {
    demo.pending = [];
    demo.callId = null;
    // the caller trickles at once (its offer goes first: the call is open by then)
    demo.answered = true;
    demo.outbox = [];
    const pc = await newPeerConnection(peer);
    setState("call", `calling ${peer}`);
    await pc.setLocalDescription(await pc.createOffer());
    demo.timings.push({ peer, offerAt: performance.now() });
    const ack = await demo.socket.timeout(5000).emitWithAck("offer", {
      to: peer, offer: pc.localDescription.toJSON() });
    if (!ack.ok && ack.error === "glare") {
      // both called at once and the other offer came first: take that call instead
      log(`glare with ${peer}: answering their call ${ack.callId}`);
      dropCall();
      if (demo.incoming?.callId === ack.callId) return accept();
      demo.glare = ack.callId;  // accept it when it arrives
      return;
    }
    if (!ack.ok) {
      const why = ERRORS[ack.error] ?? ack.error;
      return endCall(ack.error === "busy" ? `${peer} ${why}` : `The call failed: ${why}`, true);
    }
    demo.callId = ack.callId;
    if (!ack.delivered) {
      status(`${peer} is not online${ack.notified ? " (notified)" : ""}: ringing until they come online…`);
      setState("call", `calling ${peer} (offline)`);
    } else {
      status(`Ringing ${peer}…`);
    }
  } catch (err) {
    endCall(`The call failed: ${err.message}`, true);
  }
}

function flushOutbox() {
  for (const message of demo.outbox.splice(0)) {
    demo.socket.emit("candidate", { ...message, callId: demo.callId });
  }
}

async function onOffer({ from, offer, callId }) {
  if (demo.incoming?.callId === callId && demo.incoming.offer.sdp === offer.sdp) {
    return log("the offer again (held for us while away)");
  }
  if (demo.pc && callId === demo.callId) {
    // renegotiation within the call (e.g. an ICE restart)
    await demo.pc.setRemoteDescription(offer);
    await demo.pc.setLocalDescription(await demo.pc.createAnswer());
    demo.socket.emit("answer", { to: from, callId, answer: demo.pc.localDescription.toJSON() });
    return;
  }
  if (demo.pc) {
    demo.socket.emit("hangup", { to: from, callId, reason: "busy" });
    return log(`declined a call from ${from}: busy`);
  }
  demo.incoming = { from, offer, callId };
  demo.pending = [];
  if (demo.glare === callId) {
    demo.glare = null;
    return accept();
  }
  if ($("auto-answer").checked) return accept();
  $("incoming-text").textContent = `Incoming call from ${from}`;
  $("incoming").style.display = "flex";
  status(`${from} is calling you.`);
}

async function accept() {
  const { from, offer, callId } = demo.incoming;
  $("incoming").style.display = "none";
  try {
    demo.callId = callId;
    demo.answered = false;
    demo.outbox = [];
    const pc = await newPeerConnection(from);
    setState("call", `answering ${from}`);
    await pc.setRemoteDescription(offer);
    for (const candidate of demo.pending.splice(0)) await pc.addIceCandidate(candidate);
    await pc.setLocalDescription(await pc.createAnswer());
    const ack = await demo.socket.timeout(5000).emitWithAck("answer", {
      to: from, callId, answer: pc.localDescription.toJSON() });
    if (!ack.ok) return endCall(`Could not answer: ${ERRORS[ack.error] ?? ack.error}`, true);
    demo.answered = true;
    flushOutbox();
  } catch (err) {
    endCall(`Could not answer: ${err.message}`, true);
  }
}

function decline() {
  $("incoming").style.display = "none";
  demo.socket.emit("hangup", { to: demo.incoming.from, callId: demo.incoming.callId,
                              reason: "declined" });
  demo.incoming = null;
  status("Call declined.");
}

async function onAnswer({ from, answer }) {
  if (!demo.pc || from !== demo.peer) return;
  await demo.pc.setRemoteDescription(answer);
  for (const candidate of demo.pending.splice(0)) await demo.pc.addIceCandidate(candidate);
}

async function onCandidate({ from, candidate }) {
  const pc = demo.pc;
  if (pc && from === demo.peer && pc.remoteDescription) return pc.addIceCandidate(candidate);
  // before the answer (caller) or before accepting (callee): keep them for later (once:
  // what was held for us while away comes again when we join)
  const known = demo.pending.some((c) => c.candidate === candidate.candidate
                                         && c.sdpMid === candidate.sdpMid);
  if (!known && (from === demo.peer || demo.incoming?.from === from)) demo.pending.push(candidate);
}

function onHangup({ from, reason, callId }) {
  const ours = callId === undefined || callId === demo.callId || callId === demo.incoming?.callId;
  if (!ours) return log(`hangup for another call (${callId})`);
  if (reason in ENDED) return endCall(ENDED[reason](from), reason !== "answered_elsewhere");
  endCall(`${from} hung up${reason ? ` (${reason})` : ""}.`);
}

function hangup() {
  if (demo.peer) demo.socket.emit("hangup", { to: demo.peer, callId: demo.callId });
  endCall("You hung up.");
}

function dropCall() {
  if (demo.pc) demo.pc.close();
  demo.pc = null;
  demo.callId = null;
}

function endCall(text, error = false) {
  dropCall();
  demo.incoming = null;
  $("incoming").style.display = "none";
  $("remote").srcObject = null;
  demo.state.ended = text;
  setState("call", "idle");
  setState("pc", null);
  setState("ice", null);
  status(text, error);
  controls();
}

async function inboundVideoFrames() {
  if (!demo.pc) return 0;
  let frames = 0;
  (await demo.pc.getStats()).forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video") frames += report.framesDecoded ?? 0;
  });
  return frames;
}
demo.inboundVideoFrames = inboundVideoFrames;

async function selectedCandidateTypes() {
  // the candidate types of the pair the call uses: ["relay", "relay"] through TURN
  if (!demo.pc) return null;
  const stats = await demo.pc.getStats();
  let pair = null;
  stats.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId); });
  if (!pair) stats.forEach((r) => { if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") pair = r; });
  if (!pair) return null;
  return [stats.get(pair.localCandidateId)?.candidateType, stats.get(pair.remoteCandidateId)?.candidateType];
}
demo.selectedCandidateTypes = selectedCandidateTypes;

$("get-token").onclick = devToken;
$("connect").onclick = connect;
$("call").onclick = call;
$("hangup").onclick = hangup;
$("accept").onclick = accept;
$("decline").onclick = decline;
loadConfig();
