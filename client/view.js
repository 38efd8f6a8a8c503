// /view/ROOM[?token=VIEWER_KEY][&track=original|en]: the attendee's phone.
// The reader chooses the captions: as spoken, or English (translated); the
// choice is kept on this device, and ?track= (a QR code for one audience)
// overrides it.
// Feedback goes over the caption socket, without an account: tap a line,
// then "Caption wrong?" ({"type":"flag","seq":N}, one per line); stars for
// the captions ({"type":"rating","stars":1-5}) in the settings panel, and
// offered when the room ends.
import {
  CaptionList, captionsUrl, followCaptions, knownTrack, languageName, listItem, numberParam, params, prefs, room,
  withToken,
} from "/static/captions.js";

const root = document.documentElement;
const $ = (id) => document.getElementById(id);

document.title = `${room} · Live captions`;
$("room").textContent = room;

// Reading preferences belong to the reader, not the room: kept on this device (prefs).
const SIZES = [80, 90, 100, 115, 130, 150, 175, 200, 250]; // percent
const THEMES = ["auto", "dark", "light", "contrast"];

function applyTheme(theme) {
  root.dataset.theme = THEMES.includes(theme) ? theme : "auto";
  document.querySelector(`input[name=theme][value=${root.dataset.theme}]`).checked = true;
}
function applySize(percent) {
  root.style.setProperty("--scale", percent / 100);
  $("size-value").value = `${percent}%`;
  $("smaller").disabled = percent <= SIZES[0];
  $("larger").disabled = percent >= SIZES.at(-1);
}

/** The transcript of the track being read: transcript.txt, transcript.en.txt, … */
function showDownloads(track) {
  const suffix = track === "original" ? "" : `.${track}`;
  for (const format of ["txt", "vtt"]) {
    const link = $(`download-${format}`);
    link.href = withToken(`/rooms/${encodeURIComponent(room)}/transcript${suffix}.${format}`);
    link.download = `${room}${suffix}.${format}`;
  }
}

let size = SIZES.includes(Number(prefs.get("size"))) ? Number(prefs.get("size")) : 100;
applyTheme(prefs.get("theme", "auto"));
applySize(size);

for (const input of document.querySelectorAll("input[name=theme]")) {
  input.addEventListener("change", () => {
    applyTheme(input.value);
    prefs.set("theme", input.value);
  });
}
function stepSize(step) {
  const keepFollowing = following;
  size = SIZES[Math.max(0, Math.min(SIZES.length - 1, SIZES.indexOf(size) + step))];
  applySize(size);
  prefs.set("size", size);
  if (keepFollowing) scrollToLive();
}
$("smaller").addEventListener("click", () => stepSize(-1));
$("larger").addEventListener("click", () => stepSize(1));

// Follow the live end unless the reader scrolled up to reread.
let following = true;
const jump = $("jump");
const atLiveEnd = () => innerHeight + scrollY >= root.scrollHeight - 48;
function scrollToLive() {
  scrollTo(0, root.scrollHeight);
}
addEventListener("scroll", () => {
  following = atLiveEnd();
  jump.hidden = following;
}, { passive: true });
// A rotated phone or a resized window keeps the live end in view.
addEventListener("resize", () => { if (following) scrollToLive(); });
jump.addEventListener("click", () => {
  following = true;
  jump.hidden = true;
  scrollToLive();
});

const captions = new CaptionList({
  log: $("log"),
  live: $("live"),
  lowConfidence: numberParam("lowconf", 0, 0, 1),
  createItem: listItem,
});

const STATES = { connecting: "Connecting…", open: "Live", reconnecting: "Reconnecting…", closed: "Closed" };
// Calm: a word and a dot in the corner; only a refusal (a wrong key, say) says more.
function showState(state, error) {
  const offline = state === "reconnecting" && !navigator.onLine;
  $("status").dataset.state = offline ? "offline" : state;
  $("status-text").textContent = state === "failed" ? "Not connected" : offline ? "Offline" : STATES[state];
  $("notice").hidden = state !== "failed";
  $("notice").textContent = state === "failed" ? `Captions unavailable: ${error?.message ?? "refused"}.` : "";
}

// ---- feedback

const flagged = new Set(); // lines this viewer flagged: "original:SEGMENT" or "en:SEGMENT" (a translation)
let pending = null; // the feedback message waiting for its answer: {message, done(answer)}
let lastSeq = null; // of the track being read
let track = knownTrack(params.get("track")) ?? knownTrack(prefs.get("track")) ?? "original";
let connection = null;

/** Send one feedback message: over the caption socket, or (the room ended) a socket of its own. */
function sendFeedback(message, done) {
  pending = { message, done };
  if (connection.open) {
    connection.send(message);
    return;
  }
  const ws = new WebSocket(captionsUrl({ after_seq: lastSeq ?? 0, track, token: params.get("token") }));
  ws.onopen = () => ws.send(JSON.stringify(message));
  ws.onmessage = (e) => {
    const answer = JSON.parse(e.data);
    if (answer.type !== "caption") {
      reply(answer);
      ws.close(1000);
    }
  };
  ws.onerror = () => reply({ type: "refused", message: "the server cannot be reached" });
}

function reply(answer) {
  if (!pending || !["flagged", "rated", "refused", "error"].includes(answer.type)) return;
  const { done } = pending;
  pending = null;
  done(answer);
}

// A translation (the English track) is flagged as a line of its own.
$("log").addEventListener("click", (event) => {
  const item = event.target.closest(".item.final");
  if (!item || event.target.closest(".flag")) return;
  const existing = item.querySelector(".flag");
  if (existing) {
    existing.remove();
    return;
  }
  const button = document.createElement("button");
  button.type = "button";
  button.className = "flag";
  const line = `${item.classList.contains("translation") ? "en" : "original"}:${item.dataset.segment}`;
  button.textContent = flagged.has(line) ? "Reported. Thank you" : "Caption wrong?";
  button.disabled = flagged.has(line);
  button.addEventListener("click", () => {
    button.disabled = true;
    button.textContent = "Sending…";
    sendFeedback({ type: "flag", seq: Number(item.dataset.seq) }, (answer) => {
      if (answer.type === "flagged") {
        flagged.add(line);
        item.classList.add("flagged");
        button.textContent = "Reported. Thank you";
      } else {
        button.disabled = false;
        button.textContent = `Not sent (${answer.message}). Try again?`;
      }
    });
  });
  item.append(button);
});

function ratingStars(fieldset) {
  const thanks = document.createElement("output");
  for (let stars = 1; stars <= 5; stars++) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "star";
    button.dataset.stars = stars;
    button.textContent = "★";
    button.setAttribute("aria-label", `${stars} star${stars > 1 ? "s" : ""}`);
    button.addEventListener("click", () => {
      thanks.value = "Sending…";
      sendFeedback({ type: "rating", stars }, (answer) => {
        thanks.value = answer.type === "rated" ? "Thank you!" : `Not sent (${answer.message})`;
        if (answer.type !== "rated") return;
        for (const star of document.querySelectorAll(".rating .star")) {
          star.setAttribute("aria-pressed", String(Number(star.dataset.stars) <= stars));
        }
      });
    });
    fieldset.append(button);
  }
  fieldset.append(thanks);
}
ratingStars($("rating"));
ratingStars($("rating-end"));

// ---- the track: a stream of its own (its own seqs), so a switch starts over from the room's recent lines

const WAITING = $("empty").textContent;

/** On the English track of a room that is not translated only English speech shows: say why the page stays empty. */
function showRoom(message) {
  const spoken = message.language?.locked ? message.language.language : null;
  const untranslated = track === "en" && spoken && spoken !== "en" && message.translate !== "en";
  $("empty").textContent = untranslated
    ? `This room speaks ${languageName(spoken)} and is not translated into English: choose “Original” under Aa.`
    : WAITING;
}

function follow(chosen) {
  track = chosen;
  document.querySelector(`input[name=track][value="${track}"]`).checked = true;
  showDownloads(track);
  connection?.close();
  reply({ type: "refused", message: "interrupted" }); // the answer to what was pending left with the old socket
  captions.clear();
  flagged.clear();
  lastSeq = null;
  $("empty").hidden = false;
  $("empty").textContent = WAITING;
  following = true;
  jump.hidden = true;
  connection = followCaptions({
    track,
    onCaption(event) {
      lastSeq = event.seq;
      captions.apply(event);
      $("empty").hidden = true;
      if (following) scrollToLive();
    },
    onState(state, error) {
      showState(state, error);
      if (state === "failed" && error?.code === "room_ended") {
        $("settings").open = false; // the prompt, not the panel over it
        $("rate-prompt").hidden = false;
      }
    },
    onReply: reply,
    onRoom: showRoom,
  });
}

for (const input of document.querySelectorAll("input[name=track]")) {
  input.addEventListener("change", () => {
    prefs.set("track", input.value);
    // A reload (or a shared link) keeps the choice rather than the ?track= the page came with.
    if (params.has("track")) {
      const url = new URL(location.href);
      url.searchParams.set("track", input.value);
      history.replaceState(null, "", url);
    }
    follow(input.value);
  });
}
follow(track);
for (const change of ["online", "offline"]) {
  addEventListener(change, () => { if (connection.state === "reconnecting") showState("reconnecting"); });
}
