// The cifargen explorer page: plain JavaScript over the server's JSON/PNG API (see app.py).
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;           // the selected model's summary and curves
const objectUrls = new Map(); // img id -> blob URL, revoked when replaced
const latest = new Map();     // img id -> number of its newest request: older answers are dropped

async function errorOf(response) {
  try {
    return (await response.json()).error || response.statusText;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(await errorOf(response));
  return response.json();
}

// Fetch a PNG into an <img>; a refusal shows its message in errorBox instead.
async function showImage(url, img, errorBox, init) {
  const ticket = (latest.get(img.id) || 0) + 1;
  latest.set(img.id, ticket);
  try {
    const response = await fetch(url, init);
    if (!response.ok) throw new Error(await errorOf(response));
    const blob = await response.blob();
    if (latest.get(img.id) !== ticket) return;
    const blobUrl = URL.createObjectURL(blob);
    if (objectUrls.has(img.id)) URL.revokeObjectURL(objectUrls.get(img.id));
    objectUrls.set(img.id, blobUrl);
    img.src = blobUrl;
    img.dataset.request = url;  // which request the picture answers
    errorBox.textContent = "";
  } catch (e) {
    errorBox.textContent = e.message;
  }
}

function modelUrl(suffix, params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null));
  return `/api/models/${encodeURIComponent(current.name)}${suffix}?${query}`;
}

function chosenClass() { return current.conditional ? $("class").value : ""; }
function chosenPrior() { return $("prior").value; }

function fmt(value) {
  if (typeof value !== "number") return String(value ?? "");
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) return value.toExponential(3);
  return Number.isInteger(value) ? String(value) : value.toFixed(4);
}

function duration(seconds) {
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return seconds < 7200 ? `${(seconds / 60).toFixed(1)} min` : `${(seconds / 3600).toFixed(1)} h`;
}

function renderSummary(m) {
  const rows = [["kind", m.kind], ["classes", m.conditional ? `${m.class_names.length} (conditional)` : "unconditional"],
                ["latent size", m.latent_dim], ["priors", m.priors.join(", ")],
                ["epochs", m.epochs_completed], ["best epoch", m.best_epoch],
                ["training time", m.wall_time_s == null ? null : duration(m.wall_time_s)]];
  for (const [k, v] of Object.entries(m.best)) rows.push([`best test ${k}`, v]);
  for (const [k, v] of Object.entries(m.quality)) rows.push([k, v]);
  const table = $("summary");
  table.replaceChildren();
  for (const [k, v] of rows) {
    if (v === null || v === undefined) continue;
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    const cell = tr.insertCell();
    cell.textContent = fmt(v);
    if (typeof v === "number") cell.className = "num";
  }
}

const COLOURS = {train: "#4c78a8", test: "#f58518", schedule: "#54a24b"};

function chart(title, epochs, lines) {
  const w = 176, h = 100, left = 6, right = 6, top = 16, bottom = 14;
  const values = Object.values(lines).flat().filter((v) => v !== null);
  let lo = Math.min(...values), hi = Math.max(...values);
  // Positive figures spanning over two decades (the KL term, say) read better on a log scale.
  const log = lo > 0 && hi / lo > 100;
  const f = log ? Math.log10 : (v) => v;
  let flo = f(lo), fhi = f(hi);
  if (flo === fhi) { flo -= 1e-9 + Math.abs(flo) * 0.05; fhi += 1e-9 + Math.abs(fhi) * 0.05; }
  const first = epochs[0], last = epochs[epochs.length - 1];
  const x = (e) => left + (last === first ? (w - left - right) / 2 : (e - first) / (last - first) * (w - left - right));
  const y = (v) => top + (1 - (f(v) - flo) / (fhi - flo)) * (h - top - bottom);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("class", "chart");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
  };
  add("rect", {x: 0, y: 0, width: w, height: h, fill: "#fafbfc", stroke: "#e3e6ea"});
  add("text", {x: left, y: 11, "font-weight": "600"}, log ? `${title} (log)` : title);
  add("text", {x: w - right, y: 11, "text-anchor": "end", fill: "#666"}, `${fmt(lo)} – ${fmt(hi)}`);
  add("text", {x: left, y: h - 3, fill: "#666"}, `epoch ${first}`);
  add("text", {x: w - right, y: h - 3, "text-anchor": "end", fill: "#666"}, `${last}`);
  for (const [part, series] of Object.entries(lines)) {
    const points = series.map((v, i) => (v === null ? null : `${x(epochs[i])},${y(v)}`)).filter(Boolean);
    if (points.length === 1) {
      const [px, py] = points[0].split(",");
      add("circle", {cx: px, cy: py, r: 3, fill: COLOURS[part]});
    } else {
      add("polyline", {points: points.join(" "), fill: "none", stroke: COLOURS[part], "stroke-width": 1.6});
    }
  }
  return svg;
}

function renderCurves(curves) {
  const box = $("curves");
  box.replaceChildren();
  if (!curves.epochs.length) {
    box.textContent = "no metrics.json beside this model file: no curves to show";
    return;
  }
  for (const [name, lines] of Object.entries(curves.series)) box.appendChild(chart(name, curves.epochs, lines));
}

function fillSelect(select, options, chosen) {
  select.replaceChildren();
  for (const [value, text] of options) select.add(new Option(text, value, false, value === chosen));
}

function drawSamples() {
  showImage(modelUrl("/samples", {n: $("n").value, seed: $("seed").value, class: chosenClass(), prior: chosenPrior()}),
            $("samples"), $("samples-error"));
}

function drawInterpolation(endsToo) {
  const t = Number($("t").value).toFixed(2);
  $("t-value").textContent = t;
  $("between-caption").textContent = `t = ${t}`;
  const params = {seed_a: $("seed-a").value, seed_b: $("seed-b").value, class: chosenClass(), prior: chosenPrior()};
  const error = $("interpolation-error");
  showImage(modelUrl("/interpolation", {...params, t}), $("between"), error);
  if (endsToo) {
    showImage(modelUrl("/interpolation", {...params, t: 0}), $("end-a"), error);
    showImage(modelUrl("/interpolation", {...params, t: 1}), $("end-b"), error);
  }
}

async function upload(file) {
  const error = $("upload-error");
  error.textContent = "";
  if (!file) return;
  const init = {method: "POST", body: file, headers: {"Content-Type": file.type || "application/octet-stream"}};
  if (current.can_reconstruct) {
    $("recon-box").classList.remove("hidden");
    await showImage(modelUrl("/reconstruction", {class: chosenClass() || (current.conditional ? "0" : "")}),
                    $("recon"), error, init);
  } else if (current.can_discriminate) {
    try {
      const response = await fetch(modelUrl("/discrimination", {}), init);
      if (!response.ok) throw new Error(await errorOf(response));
      const verdict = await response.json();
      $("judge-box").classList.remove("hidden");
      $("upload-preview").src = URL.createObjectURL(file);
      $("real").textContent = `P(real) = ${verdict.real.toFixed(3)}; looks most like: ${verdict.predicted}`;
      const table = $("probabilities");
      table.replaceChildren();
      for (const c of verdict.classes) {
        const tr = table.insertRow();
        tr.insertCell().textContent = c.name;
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = `${Math.round(c.probability * 120)}px`;
        tr.insertCell().appendChild(bar);
        const cell = tr.insertCell();
        cell.className = "num";
        cell.textContent = c.probability.toFixed(3);
      }
    } catch (e) {
      error.textContent = e.message;
    }
  }
}

async function selectModel(name) {
  try {
    current = await getJson(`/api/models/${encodeURIComponent(name)}`);
  } catch (e) {
    $("model-note").textContent = e.message;
    return;
  }
  $("model-note").textContent = current.path;
  renderSummary(current);
  renderCurves(current.curves);
  for (const el of document.querySelectorAll(".conditional")) el.classList.toggle("hidden", !current.conditional);
  const classes = current.class_names.map((c, i) => [String(i), c]);
  fillSelect($("class"), [["", "every class"], ...classes], "");
  fillSelect($("prior"), current.priors.map((p) => [p, p === "standard" ? "standard N(0, I)" : "fitted"]),
             current.default_prior);
  for (const el of document.querySelectorAll(".priors")) el.classList.toggle("hidden", current.priors.length < 2);
  $("size").textContent = $("size2").textContent = current.image_size;
  $("upload-title").textContent = current.can_reconstruct ? "Your image, reconstructed"
    : current.can_discriminate ? "Your image, judged by the discriminator" : "Your image";
  $("upload-section").classList.toggle("hidden", !current.can_reconstruct && !current.can_discriminate);
  $("recon-box").classList.add("hidden");
  $("judge-box").classList.add("hidden");
  $("upload-error").textContent = "";
  drawSamples();
  drawInterpolation(true);
}

async function start() {
  let models;
  try {
    models = (await getJson("/api/models")).models;
  } catch (e) {
    $("model-note").textContent = e.message;
    return;
  }
  fillSelect($("model"), models.map((m) => [m.name, `${m.name} (${m.kind})`]), models[0]?.name);
  $("model").addEventListener("change", () => selectModel($("model").value));
  $("draw").addEventListener("click", drawSamples);
  $("reseed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e6); drawSamples(); });
  for (const id of ["class", "prior"]) $(id).addEventListener("change", () => { drawSamples(); drawInterpolation(true); });
  $("n").addEventListener("change", drawSamples);
  for (const id of ["seed-a", "seed-b"]) $(id).addEventListener("change", () => drawInterpolation(true));
  $("t").addEventListener("input", () => drawInterpolation(false));
  $("file").addEventListener("change", () => upload($("file").files[0]));
  if (models.length) await selectModel(models[0].name);
}

start();
