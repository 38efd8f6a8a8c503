// /overlay/ROOM?theme=&font=&size=&color=&bg=&lines=&position=&maxchars=&lowconf=&hold=&track=&preset=&token=
import { CaptionList, followCaptions, knownTrack, numberParam, params, textDirection } from "/static/captions.js";

const root = document.documentElement;
const box = document.getElementById("box");
const problem = document.getElementById("problem");
const flow = document.querySelector(".flow");

root.dataset.theme = ["dark", "light"].includes(params.get("theme")) ? params.get("theme") : "transparent";
root.dataset.position = params.get("position") === "top" ? "top" : "bottom";
// preset=608: the look of CEA-608 stream captions (what OBS sends): 32 monospace columns, 2-3 lines,
// white on black; the other parameters still apply on top.
const cea608 = params.get("preset") === "608";
if (cea608) root.dataset.preset = "608";

/** `ff0` and `ffcc00` work as well as `%23ffcc00` (a bare # would start the URL's fragment). */
function color(value) {
  if (!value) return null;
  if (/^[0-9a-f]{3,8}$/i.test(value) && CSS.supports("color", `#${value}`)) return `#${value}`;
  return CSS.supports("color", value) ? value : null;
}

/** `48` means 48px; CSS lengths such as `5vh` or `3rem` pass as they are. */
function length(value) {
  if (!value) return null;
  if (/^\d+(\.\d+)?$/.test(value)) return `${value}px`;
  return /^\d+(\.\d+)?(px|pt|em|rem|vh|vw|vmin|vmax)$/.test(value) ? value : null;
}

const settings = {
  "--font": params.get("font") && CSS.supports("font-family", params.get("font")) ? params.get("font") : null,
  "--size": length(params.get("size")),
  "--text": color(params.get("color")),
  "--box": color(params.get("bg")),
  "--lines": params.has("lines") ? numberParam("lines", 2, cea608 ? 2 : 1, cea608 ? 3 : 10) : null,
  "--chars": params.has("maxchars") && !cea608 ? numberParam("maxchars", 42, 10, 200) : null,
};
for (const [name, value] of Object.entries(settings)) {
  if (value !== null) root.style.setProperty(name, value);
}

const holdMs = numberParam("hold", 10, 0, 3600) * 1000;
let idleTimer = null;

/** Show the captions; fade them after `hold` seconds without news (0 = keep). */
function shown() {
  box.classList.remove("idle");
  clearTimeout(idleTimer);
  if (holdMs) idleTimer = setTimeout(() => box.classList.add("idle"), holdMs);
}

const captions = new CaptionList({
  log: document.getElementById("log"),
  live: document.getElementById("live"),
  lowConfidence: numberParam("lowconf", 0, 0, 1),
  keep: 30, // far more than fit in the window; older ones are out of sight
  createItem() {
    const item = document.createElement("span");
    const text = document.createElement("span");
    item.className = "item";
    text.className = "text";
    item.append(text, " ");
    return { item, text };
  },
});

followCaptions({
  track: knownTrack(params.get("track")),
  onCaption(event) {
    captions.apply(event);
    // The lines run as one paragraph: it starts on the side the newest line is written from.
    if (event.language) flow.dir = textDirection(event.language);
    shown();
  },
  // Reconnecting is silent on air; only a setup mistake (say a wrong key) is shown.
  onState(state, error) {
    root.dataset.connection = state;
    problem.hidden = state !== "failed";
    if (state === "failed") problem.textContent = `Captions unavailable: ${error?.message ?? "connection refused"}`;
  },
});
