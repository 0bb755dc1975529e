// The review page: classes in, test results out, thresholds by slider, approval.
//
// The server sends a preview's candidates once (GET /api/preview). Moving a slider
// re-filters them here, with the batch's own rule (tasks/review.py explains it):
// a candidate is shown when its score reaches its class's threshold and no shown
// candidate that NMS visits before it suppresses it. No request is made for that.

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
  "#f032e6", "#9a6324", "#469990", "#800000", "#808000", "#000075"];
const POLL_MS = 400;

const $ = (selector) => document.querySelector(selector);

// Elements are built from properties, never from HTML strings: class names, file names,
// paths and error messages are user text and go in as text only (textContent, value).
function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}
const state = { preview: null, thresholds: {}, current: 0, kept: null, models: [], trainDefaults: {} };

// ---------------------------------------------------------------- the filter

function keptCandidates(preview, thresholds) {
  // Candidates come grouped per image in NMS visiting order; suppressors point back.
  const kept = new Uint8Array(preview.candidates.length);
  preview.candidates.forEach((c, i) => {
    kept[i] = c.score >= thresholds[c.class] && !c.suppressors.some((j) => kept[j]) ? 1 : 0;
  });
  return kept;
}

// ---------------------------------------------------------------- human labels

// Per class, the candidates' scores, whether each matched a human label, and how many
// labels the class has (tasks/preview_truth.py): P/R/F1 at any threshold, no request.
function truthScore(curve, threshold) {
  let labels = 0, tp = 0;
  curve.scores.forEach((s, i) => { if (s >= threshold) { labels += 1; tp += curve.matched[i] ? 1 : 0; } });
  return {
    labels, tp,
    precision: labels ? tp / labels : null,
    recall: curve.truth ? tp / curve.truth : null,
    f1: curve.truth || labels ? (2 * tp) / (labels + curve.truth) : null,
  };
}

// The F1-optimal threshold among the candidates' scores (ties: the higher one), as
// tasks/threshold_tuning.py; null when F1 cannot choose (the class keeps its own).
function suggestedThreshold(curve) {
  if (!curve.truth || !curve.matched.some(Boolean)) return null;
  let best = null, bestF1 = -1;
  for (const s of [...new Set(curve.scores)].sort((a, b) => b - a)) {
    const f1 = truthScore(curve, s).f1;
    if (f1 > bestF1) { best = s; bestF1 = f1; }
  }
  return best;
}

const fmt = (value) => (value === null ? "n/a" : value.toFixed(2));

function showTruth(control, name) {
  const truth = state.preview.truth;
  const cell = control.querySelector(".prf");
  if (!truth || !cell) return;
  const curve = truth.classes[name];
  if (!curve || !curve.truth) {
    cell.textContent = "no labeled instances";
    return;
  }
  const score = truthScore(curve, state.thresholds[name]);
  const best = suggestedThreshold(curve);
  cell.textContent = `P ${fmt(score.precision)} R ${fmt(score.recall)} F1 ${fmt(score.f1)}` +
    (best === null ? "" : ` · best ${best.toFixed(3)}`);
  cell.dataset.f1 = score.f1 === null ? "" : String(score.f1);
}

function suggestThresholds() {
  const notes = [];
  for (const name of state.preview.class_names) {
    const curve = state.preview.truth.classes[name];
    const best = curve ? suggestedThreshold(curve) : null;
    if (best === null) { notes.push(name); continue; }
    state.thresholds[name] = best;  // exact: approved.json records it came from truth
    document.querySelector(`.class-control[data-class="${CSS.escape(name)}"] input`).value = best;
  }
  refilter();
  $("#truth-note").textContent = notes.length
    ? `Kept their thresholds (no labeled instances to tune on): ${notes.join(", ")}`
    : "Every class is at its F1-optimal threshold on the labeled sample images.";
}

function refilter() {
  state.kept = keptCandidates(state.preview, state.thresholds);
  const shown = {}, total = {};
  for (const name of state.preview.class_names) { shown[name] = 0; total[name] = 0; }
  state.preview.candidates.forEach((c, i) => { total[c.class] += 1; shown[c.class] += state.kept[i]; });
  for (const control of document.querySelectorAll(".class-control")) {
    const name = control.dataset.class;
    control.querySelector(".count").textContent = `${shown[name]}/${total[name]}`;
    control.querySelector(".value").textContent = state.thresholds[name].toFixed(2);
    showTruth(control, name);
  }
  draw();
  return { shown, total };
}

// ---------------------------------------------------------------- drawing

function colorOf(name) {
  return PALETTE[state.preview.class_names.indexOf(name) % PALETTE.length];
}

function svg(tag, attributes) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function imageUrl(index) {
  return `/api/preview/images/${index}?key=${encodeURIComponent(state.preview.key)}`;
}

function draw() {
  const { preview, current } = state;
  const image = preview.images[current];
  const overlay = $("#overlay");
  const chips = $("#image-labels");
  overlay.replaceChildren();
  chips.replaceChildren();
  if (!image || image.skipped) return;
  overlay.setAttribute("viewBox", `0 0 ${image.width || 1} ${image.height || 1}`);
  const classify = preview.task.startsWith("classify");
  const fontSize = Math.max(10, Math.round((image.width || 640) / 40));  // image units
  preview.candidates.forEach((c, i) => {
    if (c.image !== current || !state.kept[i]) return;
    const color = colorOf(c.class);
    const label = `${c.class} ${c.score.toFixed(2)}`;
    if (classify) {  // an image-level label: a chip, not a box around the whole image
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.style.background = color;
      chip.textContent = label;
      chips.append(chip);
      return;
    }
    const group = svg("g", { class: "label" });
    for (const points of c.polygons || []) {
      const pairs = [];
      for (let k = 0; k < points.length; k += 2) pairs.push(`${points[k]},${points[k + 1]}`);
      group.append(svg("polygon", { class: "mask", points: pairs.join(" "), fill: color, stroke: color }));
    }
    const [x0, y0, x1, y1] = c.box;
    group.append(svg("rect", { class: "box", x: x0, y: y0, width: x1 - x0, height: y1 - y0, stroke: color }));
    const text = svg("text", { x: x0 + 2, y: Math.max(y0 - 4, fontSize), "font-size": fontSize });
    text.textContent = label;
    group.append(text);
    overlay.append(group);
  });
}

function show(index) {
  state.current = index;
  const image = state.preview.images[index];
  const main = $("#main-image");
  main.hidden = !image || Boolean(image.skipped);
  if (image && !image.skipped) main.src = imageUrl(index);
  $("#image-name").textContent = !image
    ? "The sample has no images."
    : image.skipped ? `${image.name}: skipped (${image.skipped})` : image.name;
  document.querySelectorAll(".thumb").forEach((t) => t.classList.toggle("current", Number(t.dataset.index) === index));
  draw();
}

// ---------------------------------------------------------------- results

function renderPreview(preview) {
  state.preview = preview;
  state.thresholds = Object.fromEntries(preview.classes.map((c) => [c.name, c.threshold]));
  const readable = preview.images.filter((i) => !i.skipped).length;
  $("#results-note").textContent =
    `${readable} of ${preview.images.length} sample images · ${preview.model} · ` +
    `candidates scoring ≥ ${preview.floor}`;

  const strip = $("#thumbnails");
  strip.replaceChildren();
  for (const image of preview.images) {
    let thumb;
    if (image.skipped) {
      thumb = document.createElement("div");
      thumb.className = "thumb skipped";
      thumb.textContent = `${image.name}: ${image.skipped}`;
    } else {
      thumb = document.createElement("img");  // same URL as the main view: cached once
      thumb.className = "thumb";
      thumb.src = imageUrl(image.index);
      thumb.alt = image.name;
    }
    thumb.dataset.index = image.index;
    thumb.title = image.name;
    thumb.addEventListener("click", () => show(image.index));
    strip.append(thumb);
  }

  const controls = $("#class-controls");
  controls.replaceChildren();
  for (const cls of preview.classes) {
    const row = document.createElement("div");
    row.className = "class-control";
    row.dataset.class = cls.name;
    row.append(
      element("span", { className: "swatch" }), element("span", { className: "name" }),
      element("input", { type: "range", className: "threshold", step: "0.01", max: "1" }),
      element("span", { className: "value" }), element("span", { className: "count" }),
    );
    if (preview.truth) row.append(element("span", { className: "prf" }));
    row.querySelector(".swatch").style.background = colorOf(cls.name);
    row.querySelector(".name").textContent = cls.name;
    row.querySelector(".name").title = cls.descriptions.join("; ");
    const slider = row.querySelector("input");
    slider.min = preview.floor;
    slider.value = cls.threshold;
    slider.setAttribute("aria-label", `${cls.name} threshold`);
    slider.addEventListener("input", () => {
      state.thresholds[cls.name] = Number(slider.value);
      refilter();
    });
    controls.append(row);
  }
  $("#truth").hidden = !preview.truth;
  $("#truth-note").textContent = "";
  if (preview.truth) {
    $("#truth-source").textContent =
      `Against ${preview.truth.source} (${preview.truth.images} labeled sample images)`;
  }
  $("#results").hidden = false;
  const first = preview.images.findIndex((i) => !i.skipped);
  state.kept = keptCandidates(preview, state.thresholds);
  show(first < 0 ? 0 : first);
  refilter();
}

// ---------------------------------------------------------------- the form

function addClassRow(name = "", descriptions = "") {
  const row = document.createElement("tr");
  row.append(
    element("td", {}, [element("input", { className: "class-name", placeholder: "name" })]),
    element("td", {}, [element("input", { className: "class-desc", placeholder: "(the name)" })]),
    element("td", {}, [element("button", { type: "button", className: "remove", title: "Remove", textContent: "✕" })]),
  );
  row.querySelector(".class-name").value = name;
  row.querySelector(".class-desc").value = descriptions;
  row.querySelector(".remove").addEventListener("click", () => row.remove());
  $("#classes tbody").append(row);
}

function formRequest() {
  const classes = [...document.querySelectorAll("#classes tbody tr")]
    .map((row) => ({
      name: row.querySelector(".class-name").value.trim(),
      descriptions: row.querySelector(".class-desc").value.trim(),
    }))
    .filter((row) => row.name || row.descriptions);
  return {
    source: $("#source").value.trim(),
    classes,
    task: $("#task").value,
    model: $("#model").value.trim() || null,
    sample_size: Number($("#sample-size").value),
    seed: Number($("#seed").value),
    thresholds: state.thresholds,
  };
}

function fillForm(defaults, preview) {
  // What `autolabel ui` was given wins; the rest comes from the stored test results.
  $("#source").value = defaults.source || preview?.source || "";
  $("#task").value = defaults.task || preview?.task || "detect";
  $("#model").value = defaults.model || (defaults.task ? "" : preview?.model) || "";
  const sampleSize = preview?.images.length || defaults.sample_size;
  if (sampleSize) $("#sample-size").value = sampleSize;
  const classes = defaults.classes?.length
    ? defaults.classes.map((c) => [c.name, c.descriptions ?? ""])
    : (preview?.classes ?? []).map((c) => [c.name, c.descriptions.join("; ") === c.name ? "" : c.descriptions.join("; ")]);
  $("#classes tbody").replaceChildren();
  for (const [name, descriptions] of classes) addClassRow(name, descriptions);
  if (!classes.length) addClassRow();
}

// ---------------------------------------------------------------- server calls

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; ") : null;
    throw new Error(data.error || detail || `${response.status} ${response.statusText}`);
  }
  return data;
}

async function waitForJob(id, onProgress) {
  for (;;) {
    const job = await api("/api/job");
    if (!job || job.id !== id) throw new Error("another run was started meanwhile (another tab?): reload");
    onProgress(job);
    if (job.state !== "running") return job;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function busy(on) {
  for (const id of ["#generate", "#auto-label", "#confirm-start", "#train-start"]) $(id).disabled = on;
}

function setStatus(selector, text, error = false) {
  $(selector).textContent = text;
  $(selector).classList.toggle("error", error);
}

// Start a job (POST), follow it to its end; errors go to the section's status line.
async function runJob(statusSelector, start, follow) {
  busy(true);
  try {
    const started = await start();
    await follow(started.id);
  } catch (error) {
    setStatus(statusSelector, String(error.message || error), true);
  } finally {
    busy(false);
  }
}

function generate() {
  return runJob("#status", () => api("/api/preview", formRequest()), followPreview);
}

async function followPreview(id) {
  setStatus("#status", "Running the model on the sample…");
  const job = await waitForJob(id, (j) => {
    if (j.total) setStatus("#status", `Running the model on the sample… ${j.done}/${j.total}`);
  });
  if (job.state === "failed") throw new Error(job.error);
  renderPreview(await api("/api/preview"));
  setStatus("#status", "Test results ready (0 credits). Move the sliders to tune.");
}

function openConfirm() {
  const { preview } = state;
  const counts = refilter();
  const estimate = preview.estimate;
  $("#confirm-images").textContent = estimate.error
    ? `all images in ${preview.source} (${estimate.error})`
    : `${estimate.images} images in ${preview.source}`;
  $("#confirm-model").textContent = `${preview.task} · ${preview.model}`;
  $("#confirm-credits").textContent = estimate.error
    ? "unknown"
    : `at most ${+estimate.credits.toFixed(4)} (${estimate.rate} per image)`;
  const edited = formRequest().classes.map((c) => c.name).join("\n") !== preview.class_names.join("\n");
  $("#confirm-edited").hidden = !edited;
  const body = $("#confirm-classes tbody");
  body.replaceChildren();
  for (const name of preview.class_names) {
    const row = document.createElement("tr");
    row.dataset.class = name;
    row.append(
      element("td", { textContent: name }),
      element("td", { className: "threshold", textContent: state.thresholds[name].toFixed(2) }),
      element("td", { textContent: `${counts.shown[name]}/${counts.total[name]}` }),
    );
    body.append(row);
  }
  $("#confirm").showModal();
}

function startLabeling() {
  $("#confirm").close();
  $("#batch").hidden = false;
  $("#batch-result").hidden = true;
  setStatus("#batch-status", "Starting the batch…");
  const approval = { key: state.preview.key, thresholds: state.thresholds };
  return runJob("#batch-status", () => api("/api/label", approval), followBatch);
}

// A job's progress on a section's bar (all done: done = total = 1).
function moveBar(selector, done, total) {
  $(selector).max = total;
  $(selector).value = done;
}

async function followBatch(id) {
  const job = await waitForJob(id, (j) => {
    if (j.total) {
      moveBar("#batch-progress", j.done, j.total);
      setStatus("#batch-status", `Labeling: ${j.done}/${j.total} images`);
    }
  });
  if (job.state === "failed") throw new Error(job.error);
  const result = job.result;
  moveBar("#batch-progress", 1, 1);
  const notes = [];
  if (result.budget_stop) notes.push(`stopped by the credit budget: ${result.budget_stop}`);
  if (result.skipped.length) notes.push(`${result.skipped.length} image(s) skipped`);
  if (result.quality_failed.length) notes.push(`quality checks failed: ${result.quality_failed.join(", ")}`);
  setStatus("#batch-status", notes.length ? `Done, but ${notes.join("; ")}.` : "Done.", notes.length > 0);
  $("#batch-summary").textContent =
    `Labeled ${result.labeled} of ${result.images} images: ${result.labels} labels`;
  $("#batch-credits").textContent = result.credits_text;
  $("#batch-report").textContent = result.report;
  $("#batch-result").hidden = false;
  renderQueue(await api("/api/review/queue"));
  renderTraining({ ready: true, defaults: state.trainDefaults });  // a labeled batch now
}

// ---------------------------------------------------------------- review queue

function renderQueue(rows) {
  $("#queue").hidden = !rows.length;
  const body = $("#queue-rows");
  body.replaceChildren();
  for (const row of rows) {
    const thumb = row.thumbnail
      ? [element("img", { className: "queue-thumb", src: `/api/review/thumbnails/${row.rank}`, alt: row.image })]
      : [];
    const line = element("tr", {}, [
      element("td", { textContent: String(row.rank) }),
      element("td", {}, thumb),
      element("td", { className: "queue-image", textContent: row.image }),
      element("td", { textContent: row.score.toFixed(2) }),
      element("td", { textContent: row.reasons.join(", ") }),
      element("td", { textContent: String(row.labels) }),
    ]);
    body.append(line);
  }
}

// ---------------------------------------------------------------- trained models

const metric = (value) => (value === undefined || value === null ? "n/a" : value.toFixed(3));

function modelMetrics(model) {
  const m = model.metrics;
  const scores = model.task === "classify"
    ? `val accuracy ${metric(m.accuracy)}`
    : `val mAP@0.5 ${metric(m.map50)}, mAP ${metric(m.map)}`;
  return m.epoch ? `${scores} after epoch ${m.epoch}` : scores;
}

// The models trained into OUT/models, offered next to the model field: picking one
// fills the field with its folder and the task with its task (its backend follows).
function renderModels(models) {
  state.models = models;
  const select = $("#trained-model");
  select.replaceChildren(element("option", { value: "", textContent: "Choose one to label with it…" }));
  for (const model of models) {
    select.append(element("option", {
      value: model.path,
      textContent: `${model.name} · ${model.task} · ${model.class_names.join(", ")} · ${modelMetrics(model)}`,
    }));
  }
  $("#trained-models").hidden = !models.length;
  syncModelChoice();
}

function syncModelChoice() {
  const model = state.models.find((m) => m.path === $("#model").value.trim());
  $("#trained-model").value = model ? model.path : "";
  $("#trained-model-note").hidden = !model;
  $("#trained-model-note").textContent = model
    ? `Trained on ${model.class_names.join(", ")} from ${model.base}; ${modelMetrics(model)}.`
    : "";
}

function pickModel() {
  const model = state.models.find((m) => m.path === $("#trained-model").value);
  if (!model) return;
  $("#model").value = model.path;
  if ([...$("#task").options].some((o) => o.value === model.task)) $("#task").value = model.task;
  syncModelChoice();
}

// ---------------------------------------------------------------- training

function renderTraining(training) {
  if (!training?.ready) return;
  const first = $("#train").hidden;
  $("#train").hidden = false;
  if (!first) return;  // keep what the user typed
  const defaults = training.defaults || {};
  $("#train-base").value = defaults.base || "";
  $("#train-epochs").value = defaults.epochs ?? "";
  $("#train-batch-size").value = defaults.batch_size ?? "";
  $("#train-image-size").value = defaults.image_size ?? "";
}

function trainRequest() {
  // Empty fields are left out: the server uses `autolabel train`'s defaults.
  const request = { base: $("#train-base").value.trim(), name: $("#train-name").value.trim() };
  for (const [key, id] of [["epochs", "#train-epochs"], ["batch_size", "#train-batch-size"], ["image_size", "#train-image-size"]]) {
    const value = $(id).value.trim();
    if (value !== "") request[key] = Number(value);
  }
  const split = $("#train-split").value.trim();
  if (split) request.split = split;
  return request;
}

function startTraining() {
  moveBar("#train-progress", 0, 1);
  setStatus("#train-status", "Checking the base and the labels…");
  return runJob("#train-status", () => api("/api/train", trainRequest()), followTraining);
}

async function followTraining(id) {
  setStatus("#train-status", "Training…");
  const job = await waitForJob(id, (j) => {
    if (j.total) {
      moveBar("#train-progress", j.done, j.total);
      setStatus("#train-status", `Training: ${j.done}/${j.total} image-steps (all epochs)`);
    }
  });
  if (job.state === "failed") throw new Error(job.error);
  const result = job.result;
  moveBar("#train-progress", 1, 1);
  renderModels(await api("/api/models"));
  const pick = "Choose it under Model to label with it.";
  if (result.budget_stop) {
    setStatus("#train-status", `Stopped by the credit budget: ${result.budget_stop}. ` +
      `The checkpoint is kept: train again with the name ${result.name} to continue.`, true);
  } else if (result.already_trained) {
    setStatus("#train-status", `Already trained: ${result.name} (nothing trained, nothing charged). ${pick}`);
  } else {
    const scores = result.model ? modelMetrics(result.model) : "";
    setStatus("#train-status", `Trained ${result.name}: ${result.trained_now.length} epoch(s), ` +
      `${scores}; ${result.credits_text} credits. ${pick}`);
  }
}

// ---------------------------------------------------------------- start

async function main() {
  $("#add-class").addEventListener("click", () => addClassRow());
  $("#generate").addEventListener("click", generate);
  $("#auto-label").addEventListener("click", openConfirm);
  $("#confirm-cancel").addEventListener("click", () => $("#confirm").close());
  $("#confirm-start").addEventListener("click", startLabeling);
  $("#suggest").addEventListener("click", suggestThresholds);
  $("#trained-model").addEventListener("change", pickModel);
  $("#model").addEventListener("input", syncModelChoice);
  $("#train-start").addEventListener("click", startTraining);
  const { defaults, preview, job, queue, models, training } = await api("/api/state");
  fillForm(defaults, preview);
  if (preview) renderPreview(preview);
  renderQueue(queue || []);
  state.trainDefaults = training?.defaults || {};
  renderModels(models || []);
  renderTraining(training);
  if (job?.state === "running") {  // started before this page loaded: follow it
    const follow = { label: ["#batch-status", followBatch], train: ["#train-status", followTraining] };
    const [status, then] = follow[job.kind] || ["#status", followPreview];
    if (job.kind === "label") $("#batch").hidden = false;
    runJob(status, async () => job, then);
  }
  document.body.dataset.ready = "1";
}

main().catch((error) => setStatus("#status", String(error.message || error), true));
