// Clusterra web terminal: xterm.js speaking the binary WebSocket protocol of docs/terminal-protocol.md.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { WebLinksAddon } from "@xterm/addon-web-links";
import { SearchAddon } from "@xterm/addon-search";
import { WebglAddon } from "@xterm/addon-webgl";

const OP_INPUT = 0x01, OP_RESIZE = 0x02, OP_ACK = 0x03, OP_TERMINATE = 0x04;
const OP_OUTPUT = 0x81, OP_STATUS = 0x82;
const ACK_THRESHOLD = 64 * 1024;   // ack at once after this many processed bytes (or the server's LOW, if smaller)...
// ...else within this long. Only the threshold keeps output flowing (the server resumes at LOW); the timer just
// settles the count, so it can be long: typing at 10 keys/s costs one ACK frame a second, not one per keystroke.
const ACK_DELAY_MS = 1000;
const MAX_INPUT_CHUNK = 32 * 1024; // the server closes on frames > 64 KiB (4413): split big pastes
const CLOSE_NOT_FOUND = 4404, CLOSE_TAKEN_OVER = 4409;
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000, 8000]; // then every 8 s until the grace period is over
const WORKER_ID = /^[a-z0-9]{1,16}$/; // the server process holding a session (CLUSTERRA_WORKER_ID)

const root = document.getElementById("terminal-root");
const host = root.querySelector(".terminal-host");
const statusEl = root.querySelector(".terminal-status");
const banner = root.querySelector(".terminal-banner");
const bannerText = root.querySelector(".terminal-banner-text");
const searchInput = root.querySelector(".terminal-search-input");
const newSessionLink = root.querySelector(".terminal-new");

const config = {
  wsPath: root.dataset.wsPath,
  cwd: root.dataset.cwd || "",
  attach: root.dataset.attach || "", // ?attach=<id>: reattach to that session (the dashboard's Reattach link)
  attachWorker: root.dataset.attachWorker || "",
  posixUser: root.dataset.posixUser || "",
  renderer: new URLSearchParams(location.search).get("renderer") === "dom" ? "dom" : root.dataset.renderer || "auto",
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const term = new Terminal({
  cursorBlink: true,
  scrollback: 10000,
  fontSize: 14,
  fontFamily: 'ui-monospace, "SFMono-Regular", "Cascadia Mono", "DejaVu Sans Mono", Menlo, Consolas, "Liberation Mono", monospace',
  theme: { background: "#0b0e14", foreground: "#d8dee9", cursor: "#d8dee9", selectionBackground: "#3b4a66" },
});
const fitAddon = new FitAddon();
const searchAddon = new SearchAddon();
term.loadAddon(fitAddon);
term.loadAddon(new WebLinksAddon());
term.loadAddon(searchAddon);
term.open(host);

// ---- renderer: WebGL when possible, DOM otherwise -------------------------------------------

let webgl = null;
let webglFallbackLogged = false;

function fallBackToDom(why) {
  if (webgl) {
    try { webgl.dispose(); } catch { /* a half-activated addon may fail to dispose; DOM takes over anyway */ }
    webgl = null;
  }
  if (!webglFallbackLogged) {
    webglFallbackLogged = true;
    console.warn("Clusterra terminal: WebGL renderer unavailable, using the DOM renderer.", why);
  }
}

if (config.renderer !== "dom") {
  try {
    webgl = new WebglAddon();
    webgl.onContextLoss(() => fallBackToDom("WebGL context lost"));
    term.loadAddon(webgl);
  } catch (err) {
    fallBackToDom(err);
  }
}

// ---- sizing ---------------------------------------------------------------------------------

let fitTimer = 0;
function fitNow() {
  try { fitAddon.fit(); } catch { /* container not laid out (hidden): keep the previous size */ }
}
function scheduleFit() {
  clearTimeout(fitTimer);
  fitTimer = setTimeout(fitNow, 60);
}
new ResizeObserver(scheduleFit).observe(host);
window.addEventListener("resize", scheduleFit);

// The server accepts 1..1000; clamping beats having the session killed with 4400.
const clampSize = (n) => Math.min(1000, Math.max(1, n | 0));

// ---- UI helpers -----------------------------------------------------------------------------

// Server-provided text goes into the terminal: strip control characters so it cannot inject escapes.
const plain = (s) => String(s ?? "").replace(/[\u0000-\u001f\u007f-\u009f]/g, " ");

function setStatus(state, text) {
  root.dataset.state = state;
  statusEl.textContent = text;
}

// "1 minute 5 seconds", as clusterra/durations.py duration_words writes it.
function inWords(secs) {
  const unit = (n, name) => `${n} ${name}${n === 1 ? "" : "s"}`;
  const minutes = Math.floor(secs / 60), seconds = secs % 60;
  if (!minutes) return unit(seconds, "second");
  return seconds ? `${unit(minutes, "minute")} ${unit(seconds, "second")}` : unit(minutes, "minute");
}

let bannerTimer = 0;
function showWarning(msg) {
  const deadline = Date.now() + Math.max(0, Number(msg.seconds_left) || 0) * 1000;
  const render = () => {
    const secs = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    bannerText.textContent = msg.reason === "idle"
      ? `Session closes in ${inWords(secs)} unless you type`
      : `Session reaches its maximum duration in ${inWords(secs)}`;
  };
  clearInterval(bannerTimer);
  render();
  bannerTimer = setInterval(render, 1000);
  banner.dataset.reason = msg.reason;
  banner.hidden = false;
}
function showNotice(text) {
  clearInterval(bannerTimer);
  bannerText.textContent = text;
  banner.dataset.reason = "notice";
  banner.hidden = false;
}
function hideBanner() {
  clearInterval(bannerTimer);
  banner.hidden = true;
}
root.querySelector(".terminal-banner-close").addEventListener("click", () => { hideBanner(); term.focus(); });

// ---- connection -----------------------------------------------------------------------------

// One object per WebSocket; events of a replaced session (after "New session") are ignored.
let session = null;

function send(s, bytes) {
  if (s.ws.readyState !== WebSocket.OPEN) return false;
  s.ws.send(bytes);
  return true;
}

function sendAck(s) {
  clearTimeout(s.ackTimer);
  s.ackTimer = 0;
  if (s.unacked === 0) return;
  const frame = new Uint8Array(5);
  frame[0] = OP_ACK;
  new DataView(frame.buffer).setUint32(1, s.unacked); // big-endian is DataView's default
  send(s, frame);
  s.unacked = 0;
}

function writeOutput(s, bytes) {
  const n = bytes.length;
  if (n === 0) return;
  s.pendingWrites++; // before write(): xterm may run the callback synchronously
  term.write(bytes, () => {
    // Only now has xterm processed these bytes, so only now may they be acknowledged.
    s.pendingWrites--;
    s.unacked += n;
    if (s.unacked >= s.ackThreshold) sendAck(s);
    else if (!s.ackTimer) s.ackTimer = setTimeout(() => sendAck(s), ACK_DELAY_MS);
  });
}

function endSession(s, statusText, termLine) {
  s.state = "ended";
  term.options.disableStdin = true;
  hideBanner();
  setStatus("ended", statusText);
  term.write(`\r\n\x1b[2m[${termLine}]\x1b[0m\r\n`);
}

// The live session of this tab, so a reload or a dropped connection reattaches to it (docs/terminal-protocol.md).
const storageKey = `clusterra.terminal:${config.wsPath}`;
const remembered = {
  get() { try { return JSON.parse(sessionStorage.getItem(storageKey)); } catch { return null; } },
  set(id, grace, worker) { try { sessionStorage.setItem(storageKey, JSON.stringify({ id, grace, worker })); } catch { /* storage off */ } },
  clear() { try { sessionStorage.removeItem(storageKey); } catch { /* storage off */ } },
};

function handleStatus(s, msg) {
  if (msg.type === "connected") {
    s.state = "connected";
    s.sessionId = msg.session_id;
    s.grace = Number(msg.reattach_grace) || 0;
    s.worker = WORKER_ID.test(msg.worker || "") ? msg.worker : null;
    s.ackThreshold = Math.min(ACK_THRESHOLD, Number(msg.low_watermark) || ACK_THRESHOLD);
    remembered.set(s.sessionId, s.grace, s.worker);
    if (config.attach && new URLSearchParams(location.search).has("attach")) {
      // From here on this tab remembers the session itself; a later reload must not name it again.
      const url = new URL(location.href);
      url.searchParams.delete("attach");
      history.replaceState(null, "", url);
    }
    if (msg.reattached) {
      // The server replays its recent output next: start from a clean screen, after what is queued.
      term.write("", () => term.reset());
      term.options.disableStdin = false;
      hideBanner();
    }
    setStatus("connected", `Connected as ${plain(msg.posix_user || config.posixUser)}`);
  } else if (msg.type === "detached") {
    s.exited = true;
    endSession(s, plain(msg.message), "detached: " + plain(msg.message));
  } else if (msg.type === "warning") {
    showWarning(msg);
  } else if (msg.type === "notice") {
    showNotice(plain(msg.message));
  } else if (msg.type === "exit") {
    s.exited = true;
    if (msg.reason === "refused" && s.attachId) {
      // The session we tried to reattach to is gone.
      remembered.clear();
      if (s.onPageLoad) { s.replaced = true; connect(null); return; }
    } else {
      remembered.clear();
    }
    const reason = plain(msg.reason), message = plain(msg.message);
    endSession(s, `Session ended: ${reason}${message ? ` — ${message}` : ""}`,
      `session ended: ${reason}${message ? ` — ${message}` : ""}`);
  }
}

function handleMessage(s, data) {
  if (!(data instanceof ArrayBuffer) || data.byteLength === 0) return; // text frames are not part of the protocol
  const op = new Uint8Array(data, 0, 1)[0];
  if (op === OP_OUTPUT) {
    writeOutput(s, new Uint8Array(data, 1));
  } else if (op === OP_STATUS) {
    let msg;
    try {
      msg = JSON.parse(decoder.decode(new Uint8Array(data, 1)));
    } catch (err) {
      console.warn("Clusterra terminal: bad STATUS frame", err);
      return;
    }
    handleStatus(s, msg);
  }
}

// A reattach goes to /ws/w/<worker>/...: with several server processes behind a proxy, only the one
// holding the shell can take it over, and the proxy routes by that segment (docs/deployment.md).
function socketPath(attachId, worker) {
  if (!attachId || !WORKER_ID.test(worker || "")) return config.wsPath;
  return config.wsPath.replace(/^\/ws\//, `/ws/w/${worker}/`);
}

function connect(attachId, { onPageLoad = false, droppedAt = 0, attempt = 0, worker = null } = {}) {
  const s = {
    ws: null, state: "connecting", exited: false, replaced: false, pendingWrites: 0, unacked: 0, ackTimer: 0, ackThreshold: ACK_THRESHOLD,
    queuedResize: null, sessionId: attachId, attachId, onPageLoad, grace: 0, worker,
  };
  session = s;
  if (!droppedAt) setStatus("connecting", "Connecting…");
  let query = `cols=${clampSize(term.cols)}&rows=${clampSize(term.rows)}`;
  if (attachId) query += `&attach=${encodeURIComponent(attachId)}`;
  else if (config.cwd) query += `&cwd=${encodeURIComponent(config.cwd)}`;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  s.ws = new WebSocket(`${scheme}//${location.host}${socketPath(attachId, worker)}?${query}`);
  s.ws.binaryType = "arraybuffer";
  s.ws.onopen = () => {
    // A resize that happened during the handshake could not be sent yet.
    if (s.queuedResize) send(s, s.queuedResize);
    s.queuedResize = null;
  };
  s.ws.onmessage = (ev) => { if (s === session) handleMessage(s, ev.data); };
  s.ws.onclose = (ev) => {
    if (s !== session || s.exited || s.replaced) return; // the exit status already explained the end
    const grace = s.grace || (remembered.get() || {}).grace || 0;
    const since = droppedAt || Date.now();
    const id = s.sessionId;
    const worker = s.worker || (remembered.get() || {}).worker || null;
    if (id && ev.code !== CLOSE_TAKEN_OVER && ev.code !== CLOSE_NOT_FOUND && Date.now() - since < grace * 1000) {
      // The connection dropped but the shell lives on: reattach while the server keeps it.
      s.state = "reconnecting";
      setStatus("reconnecting", "Connection lost — reconnecting…");
      const delay = RECONNECT_DELAYS_MS[Math.min(attempt, RECONNECT_DELAYS_MS.length - 1)];
      setTimeout(() => { if (s === session) connect(id, { droppedAt: since, attempt: attempt + 1, worker }); }, delay);
      return;
    }
    remembered.clear();
    const text = `Disconnected (code ${ev.code})${ev.reason ? `: ${plain(ev.reason)}` : ""}`;
    endSession(s, text, text.toLowerCase());
  };
}

// ---- input and resize -----------------------------------------------------------------------

function sendInput(bytes) {
  const s = session;
  if (!s || s.state === "ended" || s.ws.readyState !== WebSocket.OPEN) return;
  for (let off = 0; off < bytes.length; off += MAX_INPUT_CHUNK) {
    const chunk = bytes.subarray(off, off + MAX_INPUT_CHUNK);
    const frame = new Uint8Array(1 + chunk.length);
    frame[0] = OP_INPUT;
    frame.set(chunk, 1);
    s.ws.send(frame);
  }
}

// Any input resets the server's idle timer, so it also dismisses the idle warning.
function noteInput() {
  if (!banner.hidden && banner.dataset.reason === "idle") hideBanner();
}

term.onData((str) => {
  noteInput();
  sendInput(encoder.encode(str));
});
term.onBinary((str) => {
  // onBinary strings carry one byte per char (e.g. legacy mouse reports), not UTF-16 text.
  noteInput();
  const bytes = new Uint8Array(str.length);
  for (let i = 0; i < str.length; i++) bytes[i] = str.charCodeAt(i) & 0xff;
  sendInput(bytes);
});

term.onResize(({ cols, rows }) => {
  const s = session;
  if (!s || s.state === "ended") return;
  const frame = new Uint8Array(5);
  const view = new DataView(frame.buffer);
  frame[0] = OP_RESIZE;
  view.setUint16(1, clampSize(cols));
  view.setUint16(3, clampSize(rows));
  if (s.ws.readyState === WebSocket.CONNECTING) s.queuedResize = frame;
  else send(s, frame);
});

// ---- copy / paste ---------------------------------------------------------------------------

term.attachCustomKeyEventHandler((ev) => {
  if (!ev.ctrlKey || !ev.shiftKey || ev.altKey || ev.metaKey) return true;
  const key = (ev.key || "").toLowerCase();
  if (key === "c") {
    // preventDefault: Ctrl+Shift+C would otherwise open the browser's element inspector.
    ev.preventDefault();
    if (ev.type === "keydown" && term.hasSelection() && navigator.clipboard) {
      navigator.clipboard.writeText(term.getSelection()).catch((err) => console.warn("Clusterra terminal: copy failed", err));
    }
    return false;
  }
  if (key === "v") {
    // Don't let xterm send ^V; the browser's own paste event fires and xterm handles it
    // (bracketed paste included). Reading the clipboard here as well would paste twice.
    return false;
  }
  return true;
});

// ---- search ---------------------------------------------------------------------------------

function find(backwards, incremental = false) {
  const text = searchInput.value;
  const found = backwards ? searchAddon.findPrevious(text) : searchAddon.findNext(text, { incremental });
  searchInput.classList.toggle("no-match", text !== "" && !found);
}
searchInput.addEventListener("input", () => find(false, true));
searchInput.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") {
    ev.preventDefault();
    find(ev.shiftKey);
  } else if (ev.key === "Escape") {
    searchInput.value = "";
    searchInput.classList.remove("no-match");
    searchAddon.clearDecorations();
    term.clearSelection();
    term.focus();
  }
});
root.querySelectorAll("[data-search]").forEach((btn) => {
  btn.addEventListener("click", () => find(btn.dataset.search === "prev"));
});

// ---- new session ----------------------------------------------------------------------------

newSessionLink.addEventListener("click", (ev) => {
  if (ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return; // new tab/window: let the link work
  ev.preventDefault();
  const old = session;
  session = null; // from here on, events of the old socket are ignored
  remembered.clear();
  if (old && old.ws.readyState === WebSocket.OPEN) old.ws.send(new Uint8Array([OP_TERMINATE])); // end it, don't leave it waiting
  if (old && old.ws.readyState <= WebSocket.OPEN) old.ws.close(1000, "new session");
  hideBanner();
  term.options.disableStdin = false;
  // Reset once xterm has drained output the old session already queued, so none of it leaks in.
  term.write("", () => term.reset());
  connect(null);
  term.focus();
});

// ---- start ----------------------------------------------------------------------------------

// For browser tests.
window.clusterraTerminal = {
  term,
  get state() { return session ? session.state : "ended"; },
  get socketUrl() { return session ? session.ws.url : null; },
};

fitNow(); // the first fit decides the cols/rows sent in the URL
// A reload of this tab reattaches to its live session; "Open terminal here" (a cwd) starts a new one.
const previous = config.attach ? { id: config.attach, worker: config.attachWorker || null }
  : config.cwd ? null : remembered.get();
connect(previous ? previous.id : null, { onPageLoad: Boolean(previous), worker: previous ? previous.worker : null });
term.focus();
