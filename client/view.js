// /view/ROOM[?token=VIEWER_KEY]: the attendee's phone.
import { CaptionList, followCaptions, listItem, numberParam, room, withToken } from "/static/captions.js";

const root = document.documentElement;
const $ = (id) => document.getElementById(id);

document.title = `${room} · Live captions`;
$("room").textContent = room;
for (const format of ["txt", "vtt"]) {
  const link = $(`download-${format}`);
  link.href = withToken(`/rooms/${encodeURIComponent(room)}/transcript.${format}`);
  link.download = `${room}.${format}`;
}

// Reading preferences belong to the reader, not the room: kept on this device.
const SIZES = [80, 90, 100, 115, 130, 150, 175, 200, 250]; // percent
const THEMES = ["auto", "dark", "light", "contrast"];
const prefs = {
  get(key, fallback) {
    try { return localStorage.getItem(`livecap.${key}`) ?? fallback; } catch { return fallback; }
  },
  set(key, value) {
    try { localStorage.setItem(`livecap.${key}`, value); } catch { /* private mode: this visit only */ }
  },
};

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

const connection = followCaptions({
  onCaption(event) {
    captions.apply(event);
    $("empty").hidden = true;
    if (following) scrollToLive();
  },
  onState: showState,
});
for (const change of ["online", "offline"]) {
  addEventListener(change, () => { if (connection.state === "reconnecting") showState("reconnecting"); });
}
