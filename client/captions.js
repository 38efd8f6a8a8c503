// Shared by the overlay, the phone view and the speaker page: the room and
// key from the URL, a WebSocket that reconnects by itself, the caption
// stream (resume with after_seq, dedupe by seq, acknowledgements) and the
// rendering of caption events into page-specific elements.
// Wire protocol: shared/DESIGN.md ("Wire protocol").

export const params = new URLSearchParams(location.search);

/** The room is the last path segment: /overlay/ROOM, /view/ROOM, /speak/ROOM. */
export const room = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() ?? "");

/** `ws(s)://this-host/path?query`, empty query values left out. */
export function socketUrl(path, query = {}) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const kept = Object.entries(query).filter(([, v]) => v !== null && v !== undefined && v !== "");
  const search = String(new URLSearchParams(kept));
  // Not URLSearchParams.size (Chromium 113): OBS 28–30 browser sources run Chromium 95–103.
  return `${scheme}://${location.host}${path}${search ? `?${search}` : ""}`;
}

/**
 * The caption tracks a viewer may follow: "original", the words as spoken,
 * and "en", English (the lines of English speech and the translations of the
 * others). The server's default is "original".
 */
const TRACKS = ["original", "en"];

/** `value` if it names a track, else null. */
export function knownTrack(value) {
  return TRACKS.includes(value) ? value : null;
}

/** The caption socket of this page's room. The default track is left out: such a page asks what it always asked. */
export function captionsUrl({ track = null, ...query } = {}) {
  const path = `/ws/captions/${encodeURIComponent(room)}`;
  return socketUrl(path, { ...query, track: track === "original" ? null : track });
}

/**
 * Whisper's 99 languages, code → English name, in its token order: a copy of
 * livecap/language.py WHISPER_LANGUAGES (the browser cannot name them all:
 * Chromium's Intl.DisplayNames has no name for "bo" or "ba").
 */
export const WHISPER_LANGUAGES = {
  en: "English", zh: "Chinese", de: "German", es: "Spanish", ru: "Russian", ko: "Korean", fr: "French",
  ja: "Japanese", pt: "Portuguese", tr: "Turkish", pl: "Polish", ca: "Catalan", nl: "Dutch", ar: "Arabic",
  sv: "Swedish", it: "Italian", id: "Indonesian", hi: "Hindi", fi: "Finnish", vi: "Vietnamese", he: "Hebrew",
  uk: "Ukrainian", el: "Greek", ms: "Malay", cs: "Czech", ro: "Romanian", da: "Danish", hu: "Hungarian", ta: "Tamil",
  no: "Norwegian", th: "Thai", ur: "Urdu", hr: "Croatian", bg: "Bulgarian", lt: "Lithuanian", la: "Latin",
  mi: "Maori", ml: "Malayalam", cy: "Welsh", sk: "Slovak", te: "Telugu", fa: "Persian", lv: "Latvian", bn: "Bengali",
  sr: "Serbian", az: "Azerbaijani", sl: "Slovenian", kn: "Kannada", et: "Estonian", mk: "Macedonian", br: "Breton",
  eu: "Basque", is: "Icelandic", hy: "Armenian", ne: "Nepali", mn: "Mongolian", bs: "Bosnian", kk: "Kazakh",
  sq: "Albanian", sw: "Swahili", gl: "Galician", mr: "Marathi", pa: "Punjabi", si: "Sinhala", km: "Khmer",
  sn: "Shona", yo: "Yoruba", so: "Somali", af: "Afrikaans", oc: "Occitan", ka: "Georgian", be: "Belarusian",
  tg: "Tajik", sd: "Sindhi", gu: "Gujarati", am: "Amharic", yi: "Yiddish", lo: "Lao", uz: "Uzbek", fo: "Faroese",
  ht: "Haitian Creole", ps: "Pashto", tk: "Turkmen", nn: "Nynorsk", mt: "Maltese", sa: "Sanskrit",
  lb: "Luxembourgish", my: "Myanmar", bo: "Tibetan", tl: "Tagalog", mg: "Malagasy", as: "Assamese", tt: "Tatar",
  haw: "Hawaiian", ln: "Lingala", ha: "Hausa", ba: "Bashkir", jw: "Javanese", su: "Sundanese",
};
// Languages written right to left: livecap/language.py RIGHT_TO_LEFT.
const RIGHT_TO_LEFT = new Set(["ar", "he", "fa", "ur", "yi", "ps", "sd"]);
// Whisper's codes that are not BCP 47's (lang= wants BCP 47, RFC 5646).
const BCP47 = { jw: "jv" };

const languageNames = new Intl.DisplayNames(["en"], { type: "language" });
/** "French" for "fr": Whisper's name, else the browser's; a code neither can name ("auto") as it is. */
export function languageName(code) {
  if (Object.hasOwn(WHISPER_LANGUAGES, code)) return WHISPER_LANGUAGES[code];
  try {
    return languageNames.of(code) ?? code;
  } catch {
    return code;
  }
}

/** A language menu's choices: "Detect (auto)", then Whisper's languages by name. */
export function languageOptions() {
  const named = Object.entries(WHISPER_LANGUAGES).sort(([, a], [, b]) => a.localeCompare(b));
  return [new Option("Detect (auto)", "auto"), ...named.map(([code, name]) => new Option(name, code))];
}

/** `value` if it is a Whisper language code or "auto", else null. */
export function knownLanguage(value) {
  return value === "auto" || Object.hasOwn(WHISPER_LANGUAGES, value ?? "") ? value : null;
}

/** Choices that belong to the person, not the room: kept on this device (livecap.KEY in localStorage). */
export const prefs = {
  get(key, fallback) {
    try { return localStorage.getItem(`livecap.${key}`) ?? fallback; } catch { return fallback; }
  },
  set(key, value) {
    try { localStorage.setItem(`livecap.${key}`, value); } catch { /* private mode: this visit only */ }
  },
};

/** "rtl" or "ltr": the direction `language` (a Whisper code) is written in. */
export function textDirection(language) {
  return RIGHT_TO_LEFT.has(language) ? "rtl" : "ltr";
}

/**
 * Say which language `element`'s text is in: lang= picks fonts, line
 * breaking and a screen reader's voice; dir= sets a right-to-left line from
 * the right. An event without a language (an older server) changes nothing.
 */
export function setLanguage(element, language) {
  if (!language) return;
  element.lang = BCP47[language] ?? language;
  element.dir = textDirection(language);
}

/** The same as `path` with the viewer key of this page, for links (downloads). */
export function withToken(path) {
  const token = params.get("token");
  return token ? `${path}?${new URLSearchParams({ token })}` : path;
}

// Errors worth retrying; any other error event (a wrong key, a protocol
// violation, another publisher taking over) would only repeat itself.
const RETRYABLE = new Set(["viewer_too_slow", "rate_limited", "server_busy", "internal_error", "idle_timeout",
  "shutting_down"]);
/** Open this long without being refused: the connection works (see Connection.healthy). */
const HEALTHY_MS = 10000;

/**
 * Reconnection delays: exponential with full jitter, a random delay between 0
 * and min(cap, base·2^attempt) ("Exponential Backoff And Jitter", AWS
 * Architecture Blog, 2015), so that a room full of phones refused at the same
 * moment does not come back at the same moment; added to the server's
 * retry_after_ms when it gives one.
 */
export class Backoff {
  constructor({ baseMs = 500, capMs = 30000 } = {}) {
    Object.assign(this, { baseMs, capMs });
    this.attempt = 0;
  }

  /** The delay before the next attempt (ms). */
  next(retryAfterMs = 0) {
    const window = Math.min(this.capMs, this.baseMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return retryAfterMs + Math.random() * window;
  }

  reset() {
    this.attempt = 0;
  }
}

/** The server's retry_after_ms of an error event, or 0. */
function retryAfter(error) {
  const value = error?.retry_after_ms;
  return Number.isFinite(value) && value > 0 ? value : 0;
}

/**
 * A WebSocket that reconnects with backoff until closed or refused.
 * States: "connecting" → "open" → "reconnecting" → … ; "failed" after a
 * permanent error (see RETRYABLE); "closed" after close().
 *
 * An open socket is no proof that the server took the connection: a refusal
 * (server_busy, rate_limited) arrives just after it. The backoff only starts
 * over once the page calls healthy() (it got captions, or "ready") or the
 * socket stayed open for HEALTHY_MS, so a server that keeps refusing sees
 * each page back less and less often, never sooner than it asked.
 */
export class Connection {
  /**
   * @param {() => string} url  called before every attempt (e.g. to add after_seq)
   * @param {{onOpen?: (ws: WebSocket) => void, onMessage?: (m: object) => void,
   *          onState?: (state: string, error?: {code: string, message: string}) => void}} handlers
   */
  constructor(url, { onOpen = () => {}, onMessage = () => {}, onState = () => {} } = {}) {
    Object.assign(this, { url, onOpen, onMessage, onState });
    this.backoff = new Backoff();
    this.ws = null;
    this.timer = null; // the next attempt
    this.healthTimer = null;
    this.notBefore = 0; // performance.now() before which the server asked not to come back
    this.state = "connecting";
    // A phone that changes network or wakes up should not wait out a backoff (but waits for the server's hint).
    this.retryNow = () => {
      if (this.state === "reconnecting" && performance.now() >= this.notBefore) this.connect();
    };
    this.onNetworkChange = () => { this.ws?.close(4000, "network changed"); this.retryNow(); };
    this.onVisible = () => { if (document.visibilityState === "visible") this.retryNow(); };
    addEventListener("online", this.onNetworkChange);
    document.addEventListener("visibilitychange", this.onVisible);
    this.connect();
  }

  /** The page saw this connection work: after the next drop, retry quickly again. */
  healthy() {
    clearTimeout(this.healthTimer);
    this.backoff.reset();
  }

  connect() {
    clearTimeout(this.timer);
    let error = null;
    const ws = this.ws = new WebSocket(this.url());
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      this.healthTimer = setTimeout(() => this.healthy(), HEALTHY_MS);
      this.setState("open");
      this.onOpen(ws);
    };
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      const message = JSON.parse(e.data);
      if (message.type === "error") error = message;
      this.onMessage(message);
    };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      clearTimeout(this.healthTimer);
      if (this.state === "closed") return;
      if (error && !RETRYABLE.has(error.code)) {
        this.setState("failed", error);
        return;
      }
      this.notBefore = performance.now() + retryAfter(error);
      this.timer = setTimeout(() => this.connect(), this.backoff.next(retryAfter(error)));
      this.setState("reconnecting", error ?? undefined);
    };
  }

  get open() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  send(data) {
    if (this.open) this.ws.send(typeof data === "string" || data instanceof ArrayBuffer ? data : JSON.stringify(data));
  }

  close() {
    this.setState("closed");
    clearTimeout(this.timer);
    clearTimeout(this.healthTimer);
    removeEventListener("online", this.onNetworkChange);
    document.removeEventListener("visibilitychange", this.onVisible);
    this.ws?.close(1000);
  }

  setState(state, error) {
    this.state = state;
    this.onState(state, error);
  }
}

const ACK_INTERVAL_MS = 500;

/**
 * Follow the captions of this page's room as a viewer. Every caption event
 * reaches `onCaption` exactly once and in order: after a drop the socket
 * resumes with after_seq (the server replays the finals missed meanwhile)
 * and anything at or below the last seq is skipped. After `onCaption` has
 * rendered an event, its seq is acknowledged ({"type":"ack","seq":N,
 * "age_ms":M}: rendered M ms ago; at most twice a second) so the server can
 * measure speech-to-screen delay and the operator see how far behind viewers are.
 * `fromStart`: the first connection asks for every final (else the server
 * sends the latest few); `token`: the key to present (default: the page's
 * ?token=); `track`: the caption track (TRACKS; null: the server's default);
 * `onReply`: the server's answers to what the page sent (flagged, rated,
 * refused); `onRoom`: what the server says about the room (showRoomState).
 * Another track is another stream of seqs: follow it anew.
 */
export function followCaptions({ onCaption, onState = () => {}, onReply = () => {}, onRoom = () => {},
  fromStart = false, token = params.get("token"), track = null }) {
  let lastSeq = null;
  let renderedAt = 0; // when lastSeq was rendered (performance.now())
  let acked = 0; // on the current connection
  let ackedAt = -Infinity;
  let ackTimer = null;
  const ack = () => {
    ackTimer = null;
    if (lastSeq !== null && lastSeq > acked && connection.open) {
      const now = performance.now();
      connection.send({ type: "ack", seq: lastSeq, age_ms: Math.round(now - renderedAt) });
      [acked, ackedAt] = [lastSeq, now];
    }
  };
  // Right away when the last ack is old enough, else when it will be.
  const scheduleAck = () => {
    ackTimer ??= setTimeout(ack, Math.max(0, ackedAt + ACK_INTERVAL_MS - performance.now()));
  };
  const connection = new Connection(
    () => captionsUrl({ after_seq: lastSeq ?? (fromStart ? 0 : null), track, token }),
    {
      onState,
      onOpen: () => {
        acked = 0;
        scheduleAck();
      },
      onMessage: (message) => {
        if (message.type === "caption") connection.healthy();
        else if (message.type === "room") {
          showRoomState(message);
          onRoom(message);
        }
        else if (message.type !== "error") onReply(message);
        if (message.type !== "caption" || (lastSeq !== null && message.seq <= lastSeq)) return;
        lastSeq = message.seq;
        onCaption(message);
        renderedAt = performance.now();
        scheduleAck();
      },
    },
  );
  return connection;
}

/**
 * What the server says about the room ({"type":"room","recording":true,
 * "language":{…},"translate":"en"|null}):
 * a room whose audio is being recorded says so on every page
 * (data-recording on the root element; each page's CSS shows a badge).
 */
export function showRoomState(message) {
  document.documentElement.dataset.recording = String(Boolean(message.recording));
}

// What settles a segment's line: its final, or on the English track its translation.
const LINE_KINDS = new Set(["final", "translation"]);

/**
 * Renders caption events: a segment's partial updates one item in place,
 * its final settles that same item into the log (no flicker, no jump), a
 * correction replaces a final's text. On the English track a translation is
 * its segment's line, as a final would be. Pages say what an item looks like
 * (`createItem` returns the item and the element its text goes in); the text
 * element says its language (setLanguage): the item, with the page's
 * separators and timestamps, keeps the page's direction.
 *
 * The log is the page's aria-live region: settling a final appends to it, so
 * screen readers hear each final once and never the partials.
 */
export class CaptionList {
  constructor({ log, live, createItem, lowConfidence = 0, keep = Infinity }) {
    Object.assign(this, { log, live, createItem, lowConfidence, keep });
    this.items = new Map(); // segment → {item, text}
  }

  apply(event) {
    const entry = this.items.get(event.segment);
    if (event.kind === "partial") this.partial(entry ?? this.add(event, this.live), event);
    else if (LINE_KINDS.has(event.kind)) this.final(entry ?? this.add(event, this.live), event);
    else if (event.kind === "correction" && entry) {
      entry.text.replaceChildren(event.text);
      entry.item.dataset.seq = event.seq; // the version shown now (a flag names it)
      entry.item.classList.add("corrected");
    }
  }

  /** Forget every line (another track starts over). */
  clear() {
    this.items.clear();
    this.log.replaceChildren();
    this.live.replaceChildren();
  }

  add(event, parent) {
    const entry = this.createItem(event);
    entry.item.dataset.segment = event.segment;
    this.items.set(event.segment, entry);
    parent.append(entry.item);
    return entry;
  }

  partial({ item, text }, event) {
    item.dataset.seq = event.seq;
    setLanguage(text, event.language); // before the room's language locks, each partial may detect another
    if (!text.firstChild) {
      const stable = document.createElement("span");
      const unstable = document.createElement("span");
      stable.className = "stable";
      unstable.className = "unstable";
      text.append(stable, " ", unstable);
    }
    const [stable, , unstable] = text.childNodes;
    // Only text that changed is touched: the stable words never re-render.
    if (stable.textContent !== event.stable) stable.textContent = event.stable;
    if (unstable.textContent !== event.unstable) unstable.textContent = event.unstable;
    item.classList.add("partial");
    item.hidden = !event.text; // a segment that has heard nothing yet takes no room
  }

  final(entry, event) {
    const { item, text } = entry;
    if (!event.text) {
      this.items.delete(event.segment);
      item.remove();
      return;
    }
    item.dataset.seq = event.seq;
    item.hidden = false;
    setLanguage(text, event.language);
    text.replaceChildren(...wordNodes(event, this.lowConfidence));
    item.classList.replace("partial", "final") || item.classList.add("final");
    item.classList.toggle("translation", event.kind === "translation");
    this.log.append(item);
    while (this.log.children.length > this.keep) {
      const oldest = this.log.firstElementChild;
      this.items.delete(Number(oldest.dataset.segment));
      oldest.remove();
    }
  }
}

/** A final's text as nodes, its words with a confidence below `threshold` in a `tag` element of class
 * low-confidence (0: none marked). */
export function wordNodes(event, threshold, tag = "span") {
  if (!threshold || !event.words?.length) return [event.text];
  return event.words.flatMap((word, i) => {
    const separator = i ? [" "] : [];
    if (word.conf >= threshold) return [...separator, word.w];
    const mark = document.createElement(tag);
    mark.className = "low-confidence";
    mark.title = `confidence ${Math.round(word.conf * 100)}%`;
    mark.textContent = word.w;
    return [...separator, mark];
  });
}

/** A transcript line for list layouts (phone view, speaker page): time, text. */
export function listItem(event) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  const text = document.createElement("p");
  item.className = "item";
  time.dateTime = `PT${Math.max(0, event.start).toFixed(1)}S`;
  time.textContent = formatTime(event.start);
  text.className = "text";
  item.append(time, text);
  return { item, text };
}

/** A number from the query string, within bounds, else the default. */
export function numberParam(name, fallback, min, max) {
  const value = Number.parseFloat(params.get(name) ?? "");
  return Number.isFinite(value) ? Math.min(max, Math.max(min, value)) : fallback;
}

/** Room seconds as m:ss or h:mm:ss (the timeline of the downloaded transcript). */
export function formatTime(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}
