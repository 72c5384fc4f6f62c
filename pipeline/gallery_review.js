// The inspector's review in the gallery (pipeline/gallery.py inlines this file): sort, filter,
// enlarge, decide per image with buttons or keys, keep the decisions in the browser's storage
// (the page opens from disk, no server), export them as review-<date>.csv.
// Nothing from a file name or a note is ever parsed as HTML (textContent and attributes only),
// and a CSV cell that a spreadsheet would run as a formula gets a leading apostrophe.
"use strict";
const body = document.querySelector("tbody");
const rows = () => [...body.rows];
const shown = () => rows().filter((r) => r.offsetParent !== null);
const storageKey = "panelscan-review:" + document.body.dataset.reviewKey;
const decisions = JSON.parse(localStorage.getItem(storageKey) || "{}");
const KEYS = { "1": "crack", "2": "loose_connector", "3": "other", f: "false_alarm", u: "unsure" };
let current = null;

function save() {
  localStorage.setItem(storageKey, JSON.stringify(decisions));
  const done = rows().filter((r) => decisions[r.dataset.image]).length;
  document.getElementById("reviewed").textContent = `${done} of ${rows().length} reviewed`;
}

function show(row) {
  const decision = decisions[row.dataset.image];
  for (const button of row.querySelectorAll("button[data-label]")) {
    button.setAttribute("aria-pressed", String(decision?.label === button.dataset.label));
  }
  row.querySelector("input.note").value = decision?.note || "";
  row.classList.toggle("reviewed", Boolean(decision));
}

function decide(row, label) {
  const note = row.querySelector("input.note").value;
  decisions[row.dataset.image] = { label, note, reviewed_at: new Date().toISOString() };
  show(row);
  save();
}

function select(row) {
  current?.classList.remove("current");
  current = row;
  if (row) {
    row.classList.add("current");
    row.scrollIntoView({ block: "nearest" });
  }
}

function enlarge(row) {
  const viewer = document.getElementById("viewer");
  viewer.querySelector("img.crop").src = row.dataset.crop;
  viewer.querySelector("img.heat").src = row.dataset.heatmap;
  const original = viewer.querySelector("a.original");
  original.hidden = !row.dataset.source;
  original.href = row.dataset.source || "#";
  viewer.querySelector("figcaption").textContent = row.dataset.image;
  viewer.showModal();
}

function csvCell(value) {
  let text = String(value ?? "");
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
  return '"' + text.replace(/"/g, '""') + '"';
}

function exportReview() {
  const lines = [["path", "label", "reviewed_at", "note"].join(",")];
  for (const row of rows()) {
    const d = decisions[row.dataset.image];
    if (d) lines.push([row.dataset.image, d.label, d.reviewed_at, d.note].map(csvCell).join(","));
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" }));
  link.download = `review-${document.body.dataset.date}.csv`;
  document.body.append(link);
  link.click();
  link.remove();
}

for (const th of document.querySelectorAll("th[data-key]")) {
  th.addEventListener("click", () => {
    const key = th.dataset.key, down = th.dataset.order !== "desc";
    th.dataset.order = down ? "desc" : "asc";
    const value = (row) => { const v = row.dataset[key]; return isNaN(v) ? v : Number(v); };
    rows().sort((a, b) => (value(a) > value(b) ? 1 : -1) * (down ? -1 : 1)).forEach((r) => body.append(r));
  });
}
for (const row of rows()) {
  show(row);
  row.addEventListener("click", () => select(row));
  row.querySelector("button.view").addEventListener("click", () => enlarge(row));
  for (const button of row.querySelectorAll("button[data-label]")) {
    button.addEventListener("click", () => decide(row, button.dataset.label));
  }
  row.querySelector("input.note").addEventListener("change", () => {
    if (decisions[row.dataset.image]) decide(row, decisions[row.dataset.image].label);
  });
}
document.getElementById("near").addEventListener("change", (e) => {
  document.body.classList.toggle("show-near", e.target.checked);
});
document.getElementById("export").addEventListener("click", exportReview);
document.addEventListener("keydown", (e) => {
  if (e.target.matches("input.note") || document.getElementById("viewer").open) return;
  const list = shown(), at = list.indexOf(current);
  if (e.key === "j" || e.key === "ArrowDown") select(list[Math.min(at + 1, list.length - 1)]);
  else if (e.key === "k" || e.key === "ArrowUp") select(list[Math.max(at - 1, 0)]);
  else if (e.key === "Enter" && current) enlarge(current);
  else if (KEYS[e.key] && current) decide(current, KEYS[e.key]);
  else return;
  e.preventDefault();
});
save();
