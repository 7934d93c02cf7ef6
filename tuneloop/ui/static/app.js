// The dashboard: pages over tuneloop's API (/api/… on this server, which forwards them).
// Each page is a URL; the app routes on location.pathname and polls while runs move.

import { fmt, lineChart } from "/static/charts.js";

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const ACTIVE = ["received", "preparing", "training", "tuning", "evaluating", "gating", "registering", "deploying",
  "transforming", "pending_approval"];
const STATES = [...ACTIVE, "deployed", "registered", "completed", "rejected", "failed", "stopped", "superseded",
  "rolled_back"];
let timer = null;
let generation = 0;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// The session's token: the sign-in page put it in this origin's own storage; every data
// request carries it.
const session = () => ({ "X-Tuneloop-Token": localStorage.getItem("tuneloop-token") || "" });
// This session's own facts: the API's name.
const info = fetch("/ui/info", { headers: session() }).then((r) => r.json());

async function api(method, path, body) {
  const options = { method, headers: session() };
  if (method !== "GET") {
    options.body = JSON.stringify(body === undefined ? {} : body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(`/api${path}`, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { Message: text }; }
  if (!response.ok) throw new ApiError(response.status, (data && (data.Message || data.message)) || response.statusText);
  return data;
}

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function link(href, text) { return h("a", { href }, text); }
function stateBadge(state) { return h("span", { class: `state ${state}` }, state.replace("_", " ")); }
function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
function seconds(a, b) { return (new Date(b) - new Date(a)) / 1000; }
function duration(s) {
  if (!Number.isFinite(s)) return "–";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function table(headers, rows, caption) {
  const t = h("table");
  if (caption) t.append(h("caption", { class: "sr-only" }, caption));
  t.append(h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))));
  t.append(h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) =>
    c && c.num !== undefined ? h("td", { class: "num" }, c.num) : h("td", {}, c))))));
  return t;
}

function announce(text) { statusLine.textContent = text; }

function present(nodes) { return nodes.flat().filter((n) => n !== null && n !== undefined && n !== false); }

function render(title, ...content) {
  document.title = `${title} · tuneloop`;
  main.replaceChildren(h("h1", {}, title), ...present(content));
}

function failure(error) {
  return h("p", { class: "error", role: "alert" }, error instanceof ApiError ? `${error.status}: ${error.message}` : String(error));
}

function poll(fn, ms = 3000) {
  const mine = generation;
  timer = setTimeout(async () => {
    if (mine !== generation) return;
    try { await fn(); } catch (error) { announce(`refresh failed: ${error.message}`); }
  }, ms);
}

// --- confirmation dialog --------------------------------------------------------------

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-reason").value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"
      ? { reason: document.getElementById("confirm-reason").value } : null), { once: true });
    dialog.showModal();
  });
}

// --- pages ----------------------------------------------------------------------------

function usd(value) { return Number.isFinite(value) ? `$${value.toFixed(2)}` : "–"; }

// The API's message starts with the field at fault ("config.training.epochs: …"): mark the
// control invalid and, in a JSON editor, select that field's key.
function showAtField(control, error, message) {
  error.textContent = message;
  control.setAttribute("aria-invalid", "true");
  if (control.tagName !== "TEXTAREA") { control.focus(); return; }
  const field = message.split(":")[0].replace(/^config\./, "").split(".").pop().replace(/\[\d+\]$/, "");
  const at = control.value.indexOf(`"${field}"`);
  if (at >= 0) { control.focus(); control.setSelectionRange(at, at + field.length + 2); }
}

// Every field of a project config, from the schema the API serves (GET /config/schema, made
// from the validator that enforces it): path, type, default and meaning, beside the editor.
let configSchema = null;
function schemaRows(prefix, schema, rows) {
  for (const [name, field] of Object.entries(schema.properties || {})) {
    const path = prefix + name;
    const keyed = field.properties && Object.values(field.properties).every((p) => !("default" in p)) && "default" in field;
    if (field.properties && field.additionalProperties === false && !keyed) { schemaRows(`${path}.`, field, rows); continue; }
    const shape = field.anyOf ? field.anyOf[0] : field;  // a hyperparameter: its type, or that as a string
    const kinds = (shape.enum ? shape.enum.filter((v) => v !== null).map((v) => JSON.stringify(v)).join(" | ")
      : [].concat(shape.type || "any").filter((t) => t !== "null").join(" or "))
      + (field.anyOf && field.anyOf.length > 2 ? ' or "auto"' : "");
    const fallback = !("default" in field) ? "required" : field.default === null ? "unset" : JSON.stringify(field.default);
    rows.push([h("code", {}, path), kinds, fallback.length > 40 ? "(see docs/config.md)" : fallback, field.description || ""]);
    if (keyed) for (const [key, sub] of Object.entries(field.properties)) rows.push([h("code", {}, `${path}.${key}`), "number", "", sub.description || ""]);
    if (field.additionalProperties && field.additionalProperties.properties) schemaRows(`${path}.<name>.`, field.additionalProperties, rows);
  }
  return rows;
}

async function fieldReference() {
  configSchema = configSchema || await api("GET", "/config/schema");
  return h("details", { class: "field-reference" }, h("summary", {}, "Every field, its default and meaning"),
    table(["field", "type", "default", "meaning"], schemaRows("", configSchema, []), "Project config fields"));
}

const STARTER_CONFIG = { base_model: "sentence-transformers/all-MiniLM-L6-v2", task: "text-classification" };

function newProjectForm() {
  const name = h("input", { id: "new-name", name: "name", required: true, "aria-describedby": "new-error",
    autocomplete: "off", spellcheck: "false" });
  const config = h("textarea", { id: "new-config", "aria-describedby": "new-help new-error", spellcheck: "false" });
  config.value = JSON.stringify(STARTER_CONFIG, null, 2);
  const error = h("p", { id: "new-error", class: "error", role: "alert" });
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    for (const control of [name, config]) control.removeAttribute("aria-invalid");
    let parsed;
    try { parsed = JSON.parse(config.value); } catch (e) {
      showAtField(config, error, `config: not valid JSON (${e.message})`);
      return;
    }
    try {
      const created = await api("POST", "/projects", { name: name.value, config: parsed });
      navigate(`/projects/${encodeURIComponent(created.name)}`);
    } catch (e) {
      const message = e.status === 409 ? `name: ${e.message}` : e.message;
      showAtField(message.startsWith("name") ? name : config, error, message);
    }
  } }, h("label", { for: "new-name" }, "Name"), name,
  h("label", { for: "new-config" }, "Config (JSON)"),
  h("p", { id: "new-help", class: "muted" }, "Everything but base_model and task has a default; the server validates the rest."),
  config, error, h("div", { class: "buttons" }, h("button", { class: "primary", type: "submit" }, "Create project")));
  return h("details", { class: "create" }, h("summary", {}, "New project"), form);
}

async function projectsPage() {
  const page = await api("GET", "/projects?limit=100");
  const statuses = await Promise.all(page.projects.map((project) =>
    api("GET", `/projects/${encodeURIComponent(project.name)}/status`)));
  const rows = page.projects.map((project, i) => {
    const status = statuses[i];
    const name = encodeURIComponent(project.name);
    const last = status.last_run;
    const spend = status.spend;
    return [
      link(`/projects/${name}`, project.name),
      project.config.task,
      status.deployed_run_id ? link(`/runs/${status.deployed_run_id}`, status.deployed_run_id) : "none",
      status.endpoint ? link(`/projects/${name}/endpoint`, status.endpoint.status) : "no endpoint",
      last ? h("span", {}, link(`/runs/${last.run_id}`, last.run_id), " ", stateBadge(last.state)) : "no runs",
      status.open_alarms.length
        ? h("span", { class: "alarm ALARM" }, status.open_alarms.map((a) => a.metric || a.name).join(", "))
        : "none",
      spend ? { num: `${usd(spend.usd)}${spend.complete ? "" : " + unpriced"}${spend.partial ? " (partial)" : ""}` } : { num: "–" },
    ];
  });
  const month = statuses.find((s) => s.spend)?.spend.month;
  // The stage's notices, uploads that started nothing, and its spend against its budget
  // (each optional: a stage without them says nothing rather than failing the page).
  const [notices, drops, stage] = await Promise.all([
    api("GET", "/notices?limit=10").catch(() => ({ notices: [] })),
    api("GET", "/drops?limit=10").catch(() => ({ refused: [] })),
    api("GET", "/spend").catch(() => null),
  ]);
  const budget = stage && stage.budget_usd && stage.usd !== null
    ? h("p", { class: stage.usd >= stage.budget_usd ? "error" : "muted" },
      `This stage spent ${usd(stage.usd)} of its ${usd(stage.budget_usd)} budget in ${stage.month}`
      + (stage.usd >= stage.budget_usd ? ": new runs are refused until next month." : "."))
    : null;
  const reference = await fieldReference();
  render("Projects", newProjectForm(),
    rows.length ? table(["project", "task", "deployed run", "endpoint", "last run", "open alarms",
      `spend ${month || "this month"}`], rows, "Projects")
      : h("p", {}, "No projects yet: tuneloop project create --file examples/demo-project.json"),
    rows.length ? h("p", { class: "muted" }, "Spend: every job of the runs started this month and the endpoint's "
      + "hours this month, at list prices.") : null,
    budget,
    notices.notices.length ? h("section", { "aria-labelledby": "notices" }, h("h2", { id: "notices" }, "Notices"),
      table(["time", "what happened", "next"], notices.notices.map((n) => [
        n.time, n.run_id ? h("span", {}, link(`/runs/${n.run_id}`, n.run_id), " ", n.message) : n.message,
        h("code", {}, n.next)]), "Notices")) : null,
    drops.refused.length ? h("section", { "aria-labelledby": "refused" }, h("h2", { id: "refused" }, "Uploads that started nothing"),
      table(["time", "upload", "why"], drops.refused.map((d) => [d.refused_at, h("code", {}, d.uri), d.reason]),
        "Uploads that started nothing")) : null,
    reference);
}

async function projectPage(name) {
  const project = await api("GET", `/projects/${encodeURIComponent(name)}`);
  const editor = h("textarea", { id: "config", "aria-describedby": "config-help config-error", spellcheck: "false" });
  editor.value = JSON.stringify(project.config, null, 2);
  const error = h("p", { id: "config-error", class: "error", role: "alert" });
  const saved = h("p", { class: "ok", role: "status" });
  const save = h("button", { class: "primary", type: "submit" }, "Save config");
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = ""; saved.textContent = "";
      let config;
      try { config = JSON.parse(editor.value); } catch (e) {
        showAtField(editor, error, `config: not valid JSON (${e.message})`);
        return;
      }
      try {
        await api("PUT", `/projects/${encodeURIComponent(name)}`, { config });
        editor.removeAttribute("aria-invalid");
        saved.textContent = "Saved: runs started from now on use this config.";
      } catch (e) {
        showAtField(editor, error, e.message);
      }
    },
  }, h("label", { for: "config" }, "Config (JSON)"),
  h("p", { id: "config-help", class: "muted" }, "The server validates it; an error names the field at fault."),
  editor, error, saved, h("div", { class: "buttons" }, save));
  const runs = await api("GET", `/runs?project=${encodeURIComponent(name)}&limit=20`);
  render(`Project ${name}`,
    h("p", {}, `${project.config.task} on ${project.config.base_model} · `,
      link(`/runs?project=${encodeURIComponent(name)}`, "all runs"), " · ",
      link(`/projects/${encodeURIComponent(name)}/endpoint`, "endpoint")),
    h("h2", {}, "Recent runs"),
    runs.runs.length ? runsTable(runs.runs) : h("p", {}, "No runs yet."),
    h("h2", {}, "Config"), form, await fieldReference());
}

function runsTable(runs) {
  return table(["run", "project", "state", "created", "parent"], runs.map((r) => [
    link(`/runs/${r.run_id}`, r.run_id), r.project, stateBadge(r.state), when(r.created_at),
    r.parent_run_id ? link(`/runs/${r.parent_run_id}`, r.parent_run_id) : "–",
  ]), "Runs");
}

async function runsPage() {
  const params = new URLSearchParams(location.search);
  const projects = await api("GET", "/projects?limit=100");
  const query = new URLSearchParams({ limit: "100" });
  for (const key of ["project", "state"]) if (params.get(key)) query.set(key, params.get(key));
  const select = (id, label, values, chosen) => [h("label", { for: id }, label),
    h("select", { id, name: id }, h("option", { value: "" }, "any"),
      values.map((v) => h("option", { value: v, selected: v === chosen }, v)))];
  const form = h("form", { class: "filters", onchange: (event) => {
    const data = new FormData(event.currentTarget);
    const next = new URLSearchParams([...data].filter(([, v]) => v));
    navigate(`/runs${next.size ? `?${next}` : ""}`);
  } }, h("div", {}, select("project", "Project", projects.projects.map((p) => p.name), params.get("project"))),
  h("div", {}, select("state", "State", STATES, params.get("state"))));
  const holder = h("div", { id: "runs" });
  const refresh = async () => {
    const page = await api("GET", `/runs?${query}`);
    holder.replaceChildren(page.runs.length ? runsTable(page.runs) : h("p", {}, "No runs match."));
    announce(`${page.runs.length} runs`);
    poll(refresh);
  };
  render("Runs", form, holder);
  await refresh();
}

function timeline(run) {
  const entries = run.history;
  const items = entries.map((entry, i) => {
    const next = entries[i + 1] ? entries[i + 1].time : (ACTIVE.includes(run.state) ? new Date().toISOString() : null);
    const stay = next ? duration(seconds(entry.time, next)) : "";
    return h("li", {}, h("span", { class: "when" }, when(entry.time)), " ",
      stateBadge(entry.from), " → ", stateBadge(entry.to), stay ? ` (${stay} there)` : "", h("br"),
      h("span", {}, `${entry.event_kind}: ${entry.reason}`),
      entry.commands.length ? h("span", { class: "muted" }, ` → ${entry.commands.join(", ")}`) : null,
      entry.actor ? h("span", { class: "muted" }, ` (by ${entry.actor})`) : null);
  });
  return h("ol", { class: "timeline" }, items);
}

function metricsSection(run) {
  const out = [];
  for (const [group, values] of Object.entries(run.metrics || {})) {
    if (group === "comparison" || group === "baseline") continue;
    const rows = Object.entries(values).filter(([, v]) => typeof v === "number").map(([k, v]) => [k, { num: fmt(v) }]);
    if (rows.length) out.push(h("div", {}, h("h3", {}, group), table(["metric", "value"], rows, `${group} metrics`)));
  }
  const c = (run.metrics || {}).comparison;
  if (c && c.metric) {
    out.push(h("div", {}, h("h3", {}, "Against the champion"), table(["", "value"], [
      ["metric", c.metric], ["this model", { num: fmt(c.challenger) }], ["champion", { num: fmt(c.champion) }],
      ["champion run", c.champion_run_id ? link(`/runs/${c.champion_run_id}`, c.champion_run_id) : "–"],
      ["difference", { num: fmt(c.challenger - c.champion) }],
      [`${Math.round((c.confidence || 0.95) * 100)}% interval`, `${fmt(c.low)} to ${fmt(c.high)}`],
      ["test rows", { num: c.rows }],
      ["answered differently", c.differing_rows == null ? "–" : { num: c.differing_rows }],
    ], "Champion comparison")));
  }
  const b = (run.metrics || {}).baseline;
  if (b && b.metric) {
    out.push(h("div", {}, h("h3", {}, "Against a trivial baseline"), table(["", "value"], [
      ["baseline", b.against || "–"], ["metric", b.metric], ["this model", { num: fmt(b.challenger) }],
      ["baseline scores", { num: fmt(b.baseline) }], ["difference", { num: fmt(b.challenger - b.baseline) }],
      [`${Math.round((b.confidence || 0.95) * 100)}% interval`, `${fmt(b.low)} to ${fmt(b.high)}`],
      ["test rows", { num: b.rows }],
    ], "Baseline comparison")));
  }
  return out.length ? h("div", { class: "grid2" }, out) : h("p", {}, "No metrics yet.");
}

function tuningSection(tuning) {
  if (!tuning) return null;
  const trials = [...tuning.trials].sort((a, b) => a.training_job.localeCompare(b.training_job));
  const metric = tuning.objective.metric || "objective";
  const better = (tuning.objective.type || "Maximize") === "Maximize" ? Math.max : Math.min;
  let best = null;
  const points = [], bestPoints = [];
  trials.forEach((t, i) => {
    if (typeof t.objective !== "number") return;
    best = best === null ? t.objective : better(best, t.objective);
    points.push([i + 1, t.objective]);
    bestPoints.push([i + 1, best]);
  });
  const chart = lineChart({
    title: `Tuning trials: ${metric} per trial`, xLabel: "trial (in the order started)", yLabel: metric,
    series: [{ name: "trial", points, line: false }, { name: "best so far", points: bestPoints, dashed: true }],
    xFormat: (x) => String(Math.round(x)), integerX: true,
  });
  const rows = trials.map((t, i) => [{ num: i + 1 }, t.training_job, t.status,
    { num: typeof t.objective === "number" ? fmt(t.objective) : "–" },
    Object.entries(t.hyperparameters).map(([k, v]) => `${k}=${v}`).join(" "), t.chosen ? "chosen" : ""]);
  return h("section", { "aria-labelledby": "tuning" }, h("h2", { id: "tuning" }, `Tuning (${tuning.job_name})`), chart,
    table(["trial", "training job", "status", metric, "hyperparameters", ""], rows, "Tuning trials"));
}

function trainingSection(evaluation) {
  const history = (evaluation && evaluation.training_history) || [];
  if (!history.length) return null;
  const at = (key, x = "step") => history.filter((e) => typeof e[key] === "number").map((e) => [e[x], e[key]]);
  const losses = [{ name: "training loss", points: at("train_loss") },
    { name: "validation loss", points: at("validation_loss"), dashed: true }].filter((s) => s.points.length);
  const scores = Object.keys(Object.assign({}, ...history)).filter((k) => k.startsWith("validation_") && k !== "validation_loss"
    && !k.includes("ece") && !k.includes("perplexity")).sort();
  const charts = [];
  if (losses.length) {
    charts.push(lineChart({ title: "Loss per training step", xLabel: "step", yLabel: "loss", series: losses,
      xFormat: (x) => String(Math.round(x)), integerX: true }));
  }
  const perEpoch = scores.map((k) => ({ name: k.replace("validation_", "validation "), points: at(k, "epoch") }))
    .filter((s) => s.points.length);
  if (perEpoch.length) {
    charts.push(lineChart({ title: "Validation metrics per epoch", xLabel: "epoch", yLabel: "score (0 to 1)",
      series: perEpoch, xFormat: (x) => String(Math.round(x)), integerX: true }));
  }
  const perplexity = at("validation_perplexity", "epoch");
  if (perplexity.length) {
    charts.push(lineChart({ title: "Validation perplexity per epoch", xLabel: "epoch", yLabel: "perplexity",
      series: [{ name: "validation perplexity", points: perplexity }], xFormat: (x) => String(Math.round(x)), integerX: true }));
  }
  return h("section", { "aria-labelledby": "training" }, h("h2", { id: "training" }, "Training curves"),
    h("p", { class: "muted" }, "What the chosen training job recorded, read from the model it wrote."),
    h("div", { class: "grid2" }, charts));
}

function confusionMatrix(labels, matrix) {
  const t = h("table", { class: "matrix" });
  t.append(h("caption", {}, "Confusion matrix on the test split: rows are the true label, columns the predicted one"));
  t.append(h("thead", {}, h("tr", {}, h("td"), labels.map((l) => h("th", { scope: "col" }, `predicted ${l}`)))));
  t.append(h("tbody", {}, matrix.map((row, r) => h("tr", {}, h("th", { scope: "row" }, `true ${labels[r]}`),
    row.map((n, c) => h("td", { class: r === c ? "diagonal" : null }, String(n)))))));
  return t;
}

function evaluationDetail(run) {
  const e = run.evaluation;
  if (!e || e.error) return e && e.error ? [h("p", { class: "error" }, e.error)] : [];
  const out = [];
  if (e.per_class) {
    out.push(h("div", {}, h("h3", {}, "Per class"), table(["label", "precision", "recall", "F1", "test rows"],
      Object.entries(e.per_class).map(([label, m]) => [label, { num: fmt(m.precision) }, { num: fmt(m.recall) },
        { num: fmt(m.f1) }, { num: m.support }]), "Per-class metrics on the test split")));
  }
  if (e.labels && e.confusion_matrix) out.push(h("div", {}, h("h3", {}, "Confusion matrix"), confusionMatrix(e.labels, e.confusion_matrix)));
  if (e.calibration && e.calibration.length) {
    const ece = (run.metrics.evaluation || {}).ece;
    out.push(h("div", {}, h("h3", {}, "Calibration"), lineChart({
      title: `Reliability: accuracy against confidence${Number.isFinite(ece) ? ` (ECE ${fmt(ece)})` : ""}`,
      description: "Each point is a bin of test predictions: their mean confidence and the share that were right. "
        + "On the dashed diagonal the model is calibrated.",
      xLabel: "confidence (top class)", yLabel: "accuracy",
      series: [{ name: "test predictions", points: e.calibration.map((b) => [b.confidence, b.accuracy]) },
        { name: "perfectly calibrated", points: [[0, 0], [1, 1]], dashed: true }],
      xRange: [0, 1], yRange: [0, 1],
    })));
  }
  return out;
}

function generationsSection(evaluation) {
  const worst = (evaluation && evaluation.generations) || [];
  if (!worst.length) return null;
  const names = Object.keys(worst[0].scores || {});
  const texts = (t) => { t.classList.add("texts"); return t; };  // prompts keep their line breaks
  const out = [h("h2", { id: "generations" }, "Generations, worst first"),
    texts(table(["prompt", "expected", "generated", ...names], worst.map((g) => [g.prompt, g.expected, g.generated,
      ...names.map((n) => ({ num: fmt(g.scores[n]) }))]), "Test prompts, what the model generated, and its scores"))];
  const differ = evaluation.differences || [];
  if (differ.length) {
    out.push(h("h3", {}, "Where this model and the champion differ"),
      texts(table(["prompt", "expected", "this model", "champion", ...names.map((n) => `${n} (this / champion)`)],
        differ.map((d) => [d.prompt, d.expected, d.challenger, d.champion,
          ...names.map((n) => ({ num: `${fmt(d.challenger_scores[n])} / ${fmt(d.champion_scores[n])}` }))]),
        "Test prompts the two models answer differently")));
  }
  return h("section", { "aria-labelledby": "generations" }, out);
}

function evaluationSection(run) {
  const links = run.links || {};
  const plots = Object.entries(links).filter(([k]) => k.startsWith("plot:"));
  const detail = evaluationDetail(run);
  if (!plots.length && !links.report && !detail.length) return null;
  return h("section", { "aria-labelledby": "evaluation" }, h("h2", { id: "evaluation" }, "Evaluation"),
    links.report ? h("p", {}, h("a", { href: links.report, target: "_blank", rel: "noopener" }, "The evaluation report (opens the report page)")) : null,
    detail.length ? h("div", { class: "grid2" }, detail) : null,
    h("div", { class: "grid2" }, plots.map(([k, url]) => h("figure", { class: "plot" },
      h("figcaption", {}, k.slice(5).replaceAll("_", " ")),
      h("img", { src: url, alt: `${k.slice(5).replaceAll("_", " ")} plot of run ${run.run_id}'s evaluation; the numbers are in the metrics above` })))));
}

function costSection(cost) {
  if (!cost || !cost.lines || !cost.lines.length) return null;
  const rows = cost.lines.map((line) => [line.job || line.endpoint, line.instance_type || "",
    { num: "hours" in line ? `${line.hours.toFixed(3)} h` : `${(line.billable_seconds || 0).toFixed(0)} s` },
    { num: line.usd === null || line.usd === undefined ? "unpriced" : `$${line.usd.toFixed(4)}` }]);
  rows.push([h("strong", {}, "total"), "", "", { num: `$${cost.total_usd.toFixed(4)}` }]);
  return h("section", { "aria-labelledby": "cost" }, h("h2", { id: "cost" }, "Cost"),
    h("p", { class: "muted" }, `At the list prices of ${cost.prices_as_of}${cost.complete ? "" : "; some lines unpriced"}.`),
    table(["job or endpoint", "instance", "billable", "USD"], rows, "Cost per job"));
}

function productionSection(production) {
  if (!production || (!production.data && !production.held_out)) return null;
  const out = [h("h2", { id: "production" }, "Learned from production")];
  const data = production.data || {};
  if (data.rows !== undefined) {
    const window = data.window || {};
    out.push(h("p", {}, `${data.rows} labelled production examples, ${window.first || "?"} to ${window.last || "?"}; `
      + `train/validation/test ${Object.values(data.splits || {}).join("/")}; ${data.duplicates || 0} already in the data.`));
  }
  const held = production.held_out;
  if (held) {
    // A classifier's accuracy and macro-F1; a language model's scorers on its corrected requests.
    const who = ["challenger", "champion"].filter((w) => held[w]);
    const metrics = who.length ? Object.keys(held[who[0]]) : [];
    out.push(table(["model", ...metrics], who.map((w) =>
      [w === "challenger" ? "this run's model" : "the champion", ...metrics.map((m) => ({ num: fmt(held[w][m]) }))]),
    `On ${held.examples} held-out production rows`));
  }
  return h("section", { "aria-labelledby": "production" }, out);
}

// ``answer`` outlives the page's refreshes (it is the same element each time): the API's
// reply stays on screen after the run is drawn again.
function actions(run, refresh, answer) {
  const act = (label, path, text, enabled, body = (reason) => (reason ? { reason } : undefined)) =>
    h("button", { type: "button", disabled: !enabled, onclick: async () => {
      const confirmed = await confirmAction(text);
      if (!confirmed) return;
      try {
        const result = await api("POST", path, body(confirmed.reason));
        answer.textContent = `${label}: ${JSON.stringify(result)}`;
        await refresh();
      } catch (error) {
        answer.textContent = `${label} refused: ${error.status} ${error.message}`;
      }
    } }, label);
  const id = run.run_id;
  return h("section", { "aria-labelledby": "actions" }, h("h2", { id: "actions" }, "Actions"),
    h("div", { class: "buttons" },
      act("Approve", `/runs/${id}/approve`, `Approve run ${id}'s model for deployment?`, run.state === "pending_approval"),
      act("Reject", `/runs/${id}/reject`, `Reject run ${id}'s model?`, run.state === "pending_approval"),
      act("Stop", `/runs/${id}/stop`, `Stop run ${id}? Its running job is stopped.`, ACTIVE.includes(run.state), () => undefined),
      act("Stop serving", `/runs/${id}/stop`, `Stop run ${id} and delete the endpoint it serves? Its project then `
        + "serves nothing until another run deploys.", run.state === "deployed",
      (reason) => ({ stop_serving: true, ...(reason ? { reason } : {}) })),
      act("Retrain", `/runs/${id}/retrain`, `Start a retraining run of ${id}?`, run.state === "deployed")),
    answer);
}

async function runPage(id) {
  const holder = h("div");
  const answer = h("pre", { class: "answer", role: "status", "aria-live": "polite" });
  const refresh = async () => {
    let run;
    try {
      run = await api("GET", `/runs/${encodeURIComponent(id)}`);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      // A run just requested may not exist yet (its parent's outbox starts it): keep looking.
      holder.replaceChildren(h("p", { role: "status" }, `No run ${id} yet; looking again every few seconds.`));
      poll(refresh);
      return;
    }
    const children = (await api("GET", `/runs?project=${encodeURIComponent(run.project)}&limit=100`)).runs
      .filter((r) => r.parent_run_id === id);
    holder.replaceChildren(...present([
      h("p", {}, "State ", stateBadge(run.state), " · project ", link(`/projects/${run.project}`, run.project),
        run.parent_run_id ? h("span", {}, " · retraining run of ", link(`/runs/${run.parent_run_id}`, run.parent_run_id)) : null,
        run.awaiting ? ` · waiting on ${run.awaiting}` : ""),
      children.length ? h("p", {}, "Retraining runs: ", children.flatMap((c, i) =>
        [i ? ", " : "", link(`/runs/${c.run_id}`, c.run_id), " ", stateBadge(c.state)])) : null,
      h("p", { class: "muted" }, `dataset ${run.dataset_uri}`),
      run.links.model_artifact ? h("p", { class: "muted" }, `model ${run.links.model_artifact}`,
        run.links.base_model_artifact ? `, a LoRA adapter served on ${run.links.base_model_artifact}` : "") : null,
      actions(run, refresh, answer),
      h("section", { "aria-labelledby": "history" }, h("h2", { id: "history" }, "Timeline"), timeline(run)),
      h("section", { "aria-labelledby": "metrics" }, h("h2", { id: "metrics" }, "Metrics"), metricsSection(run)),
      tuningSection(run.tuning), trainingSection(run.evaluation), evaluationSection(run),
      generationsSection(run.evaluation), productionSection(run.production), costSection(run.cost)]));
    announce(`run ${id} is ${run.state}`);
    if (ACTIVE.includes(run.state)) poll(refresh);
  };
  render(`Run ${id}`, holder);
  await refresh();
}

const WINDOWS = [["1", "1 hour"], ["6", "6 hours"], ["24", "1 day"], ["72", "3 days"], ["168", "1 week"]];

function timeFormat(hours) {
  return (x) => new Date(x).toLocaleString([], hours > 24
    ? { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" } : { hour: "2-digit", minute: "2-digit" });
}

function at(points) { return points.map(([t, v]) => [Date.parse(t), v]); }

function splitSection(view) {
  if (!view.traffic_split.length) return null;
  const rows = view.traffic_split.map((f) => [f.role === "new" ? "new model" : "serving",
    f.run_id ? link(`/runs/${f.run_id}`, f.run_id) : f.config, { num: `${(f.share * 100).toFixed(0)}%` },
    f.phase ? `${f.phase}: ${f.message}` : "in service"]);
  const shares = view.traffic_split.filter((f) => f.share > 0).map((f) => {
    const bar = h("div", { class: `share ${f.role}` }, `${f.role === "new" ? "new" : "serving"} ${(f.share * 100).toFixed(0)}%`);
    bar.style.width = `${(f.share * 100).toFixed(1)}%`;  // CSSOM, which the page's CSP allows
    return bar;
  });
  return h("section", { "aria-labelledby": "split" }, h("h2", { id: "split" }, "Traffic split"),
    view.traffic_split.some((f) => f.role === "new")
      ? h("p", {}, "A blue/green update is shifting traffic to the new model; the alarms below can roll it back.") : null,
    table(["fleet", "run", "share of traffic", "phase"], rows, "Traffic split"), h("div", { class: "shares", "aria-hidden": "true" }, shares));
}

function trafficSection(view, hours) {
  const t = view.traffic;
  const x = { xLabel: "time", xFormat: timeFormat(hours), xRange: [Date.parse(view.window.start), Date.parse(view.window.end)] };
  const per = `per ${view.window.period_s / 60} min`;
  return h("section", { "aria-labelledby": "traffic" }, h("h2", { id: "traffic" }, "Traffic"), h("div", { class: "grid2" },
    lineChart({ title: `Invocations and errors ${per}`, yLabel: `requests ${per}`, ...x, series: [
      { name: "invocations", points: at(t.invocations) }, { name: "4XX errors", points: at(t.errors_4xx) },
      { name: "5XX errors", points: at(t.errors_5xx) }] }),
    lineChart({ title: "Model latency (ms)", yLabel: "milliseconds", ...x, series: [
      { name: "p50", points: at(t.latency_p50_ms) }, { name: "p99", points: at(t.latency_p99_ms), dashed: true }] })));
}

function monitoringSection(view, hours) {
  if (!view.monitoring.length) {
    return h("section", { "aria-labelledby": "monitoring" }, h("h2", { id: "monitoring" }, "Drift and quality"),
      h("p", {}, view.serving_run_id ? "The serving run has no monitoring alarms." : "No run is deployed."));
  }
  // One chart per metric, one series per model (each measured on the traffic it answered),
  // marked where a model took over; the threshold is the newest model's.
  const metrics = [...new Set(view.monitoring.map((m) => `${m.kind}:${m.metric}`))];
  const switches = view.switches || [];
  const charts = metrics.map((key) => {
    const series = view.monitoring.filter((m) => `${m.kind}:${m.metric}` === key);
    const m = series[series.length - 1];
    const alarms = new Set(series.map((s) => s.alarm));
    const changes = view.alarm_changes.filter((c) => alarms.has(c.alarm));
    return lineChart({
      title: `${m.metric} (${m.kind}); alarm when ${m.breaches} ${fmt(m.threshold)}`,
      xLabel: "time", yLabel: m.metric, xFormat: timeFormat(hours),
      xRange: [Date.parse(view.window.start), Date.parse(view.window.end)],
      series: series.map((s, i) => ({ name: `run ${s.run_id}`, points: at(s.points), dashed: i < series.length - 1 })),
      thresholds: [{ value: m.threshold, label: m.breaches === "below" ? "floor" : "threshold" }],
      markers: [...switches.map((w) => ({ x: Date.parse(w.time),
        label: w.deploying ? `run ${w.run_id} deploying beside ${w.replaced}` : `run ${w.run_id} takes over from ${w.replaced}` })),
        ...changes.map((c) => ({ x: Date.parse(c.time), label: `${c.from} → ${c.to}: ${c.reason}` }))],
    });
  });
  return h("section", { "aria-labelledby": "monitoring" }, h("h2", { id: "monitoring" }, "Drift and quality"),
    h("p", { class: "muted" }, "What each monitoring check published, against its alarm's threshold, for each model "
      + "on the traffic it answered (a new model starts with no data of its own). An ALARM starts a retraining run."),
    switches.length ? h("ul", { id: "switches" }, switches.map((w) => h("li", {}, when(w.time), " · ",
      link(`/runs/${w.run_id}`, w.run_id), w.deploying ? ` is being deployed beside ${w.replaced}` : ` took over from ${w.replaced}`))) : null,
    h("div", { class: "grid2" }, charts));
}

function alarmsSection(view) {
  if (!view.alarms.length) return null;
  return h("section", { "aria-labelledby": "alarms" }, h("h2", { id: "alarms" }, "Alarms"),
    table(["alarm", "metric", "state", "since", "reason"], view.alarms.map((a) => [a.name, a.metric || "",
      h("span", { class: `alarm ${a.state}` }, a.state), when(a.since), a.reason]), "Alarms of the serving run"),
    view.alarm_changes.length ? table(["time", "alarm", "change", "reason"], view.alarm_changes.map((c) =>
      [when(c.time), c.alarm, `${c.from} → ${c.to}`, c.reason]), "Alarm state changes in the window")
      : h("p", {}, "No alarm changed state in this window."));
}

async function endpointPage(name) {
  const params = new URLSearchParams(location.search);
  const hours = WINDOWS.some(([v]) => v === params.get("hours")) ? params.get("hours") : "6";
  const holder = h("div");
  const answer = h("pre", { class: "answer", role: "status", "aria-live": "polite" });
  const base = `/projects/${encodeURIComponent(name)}/endpoint`;
  const windowForm = h("form", { class: "filters", onchange: (event) => navigate(`${base}?hours=${event.target.value}`) },
    h("div", {}, h("label", { for: "hours" }, "Window"), h("select", { id: "hours", name: "hours" },
      WINDOWS.map(([v, label]) => h("option", { value: v, selected: v === hours }, label)))));
  const check = h("button", { type: "button", onclick: async () => {
    if (!await confirmAction(`Run ${name}'s drift check now?`)) return;
    try {
      answer.textContent = `Drift check: ${JSON.stringify(await api("POST", `/projects/${encodeURIComponent(name)}/drift-check`))}`;
    } catch (error) {
      answer.textContent = `Drift check refused: ${error.status} ${error.message}`;
    }
  } }, "Check drift now");
  const refresh = async () => {
    const view = await api("GET", `${base}?hours=${hours}`);
    holder.replaceChildren(...present([
      h("p", {}, "Endpoint ", h("strong", {}, view.endpoint), " · status ", h("strong", { id: "endpoint-status" }, view.status || "none"),
        " · serving run ", view.serving_run_id ? link(`/runs/${view.serving_run_id}`, view.serving_run_id) : "none",
        view.deploying_run_id ? h("span", {}, " · deploying ", link(`/runs/${view.deploying_run_id}`, view.deploying_run_id)) : null),
      view.failure_reason ? h("p", { class: "error" }, view.failure_reason) : null,
      view.errors.length ? h("ul", { class: "error", role: "alert" }, view.errors.map((e) => h("li", {}, e))) : null,
      splitSection(view), trafficSection(view, Number(hours)), monitoringSection(view, Number(hours)), alarmsSection(view)]));
    announce(`endpoint ${view.endpoint} is ${view.status || "absent"}`);
    poll(refresh, view.status === "Updating" || view.deploying_run_id ? 3000 : 15000);
  };
  render(`Endpoint of ${name}`, windowForm,
    h("section", { "aria-labelledby": "endpoint-actions" }, h("h2", { id: "endpoint-actions", class: "sr-only" }, "Actions"),
      h("div", { class: "buttons" }, check), answer), holder);
  await refresh();
}

// --- routing --------------------------------------------------------------------------

async function route() {
  generation += 1;
  clearTimeout(timer);
  const path = location.pathname;
  for (const a of document.querySelectorAll("nav a[data-section]")) {
    const current = path.startsWith(`/${a.dataset.section}`) || (path === "/" && a.dataset.section === "projects");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  try {
    let match;
    if (path === "/" || path === "/projects") await projectsPage();
    else if ((match = path.match(/^\/projects\/([^/]+)$/))) await projectPage(decodeURIComponent(match[1]));
    else if ((match = path.match(/^\/projects\/([^/]+)\/endpoint$/))) await endpointPage(decodeURIComponent(match[1]));
    else if (path === "/runs") await runsPage();
    else if ((match = path.match(/^\/runs\/([^/]+)$/))) await runPage(decodeURIComponent(match[1]));
    else render("Not found", h("p", {}, `No page at ${path}. `, link("/", "Projects")));
  } catch (error) {
    render("Something went wrong", failure(error));
  }
}

function navigate(href) {
  history.pushState({}, "", href);
  route().then(() => main.focus());
}

document.addEventListener("click", (event) => {
  const a = event.target.closest("a");
  if (!a || a.target || a.origin !== location.origin || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  navigate(a.pathname + a.search);
});
window.addEventListener("popstate", route);
info.then((facts) => {
  document.getElementById("backend").textContent = `API: ${facts.backend}`;
}, () => {});
route();
