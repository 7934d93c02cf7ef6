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

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
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

async function projectsPage() {
  const page = await api("GET", "/projects?limit=100");
  const rows = [];
  for (const project of page.projects) {
    const [deployed, latest] = await Promise.all([
      api("GET", `/runs?project=${encodeURIComponent(project.name)}&state=deployed&limit=1`),
      api("GET", `/runs?project=${encodeURIComponent(project.name)}&limit=1`),
    ]);
    const serving = deployed.runs[0];
    const last = latest.runs[0];
    rows.push([
      link(`/projects/${project.name}`, project.name),
      project.config.task,
      project.config.base_model,
      serving ? link(`/runs/${serving.run_id}`, serving.run_id) : "none",
      last ? h("span", {}, link(`/runs/${last.run_id}`, last.run_id), " ", stateBadge(last.state)) : "no runs",
      link(`/runs?project=${encodeURIComponent(project.name)}`, "runs"),
    ]);
  }
  render("Projects",
    rows.length ? table(["project", "task", "base model", "deployed run", "last run", ""], rows, "Projects")
      : h("p", {}, "No projects yet: tuneloop project create --file examples/demo-project.json"));
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
        error.textContent = `config: not valid JSON (${e.message})`;
        editor.setAttribute("aria-invalid", "true");
        return;
      }
      try {
        await api("PUT", `/projects/${encodeURIComponent(name)}`, { config });
        editor.removeAttribute("aria-invalid");
        saved.textContent = "Saved: runs started from now on use this config.";
      } catch (e) {
        // The API's message starts with the field at fault: point at it in the editor.
        error.textContent = e.message;
        editor.setAttribute("aria-invalid", "true");
        const field = e.message.split(":")[0].replace(/^config\./, "").split(".").pop();
        const at = editor.value.indexOf(`"${field}"`);
        if (at >= 0) { editor.focus(); editor.setSelectionRange(at, at + field.length + 2); }
      }
    },
  }, h("label", { for: "config" }, "Config (JSON)"),
  h("p", { id: "config-help", class: "muted" }, "The server validates it; an error names the field at fault."),
  editor, error, saved, h("div", { class: "buttons" }, save));
  const runs = await api("GET", `/runs?project=${encodeURIComponent(name)}&limit=20`);
  render(`Project ${name}`,
    h("p", {}, `${project.config.task} on ${project.config.base_model} · `,
      link(`/runs?project=${encodeURIComponent(name)}`, "all runs")),
    h("h2", {}, "Recent runs"),
    runs.runs.length ? runsTable(runs.runs) : h("p", {}, "No runs yet."),
    h("h2", {}, "Config"), form);
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
    if (group === "comparison") continue;
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
    ], "Champion comparison")));
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

function evaluationSection(run) {
  const links = run.links || {};
  const plots = Object.entries(links).filter(([k]) => k.startsWith("plot:"));
  if (!plots.length && !links.report) return null;
  return h("section", { "aria-labelledby": "evaluation" }, h("h2", { id: "evaluation" }, "Evaluation"),
    links.report ? h("p", {}, h("a", { href: links.report, target: "_blank", rel: "noopener" }, "The evaluation report (opens the report page)")) : null,
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
    out.push(table(["model", "accuracy", "macro-F1"], ["challenger", "champion"].filter((w) => held[w]).map((w) =>
      [w === "challenger" ? "this run's model" : "the champion", { num: fmt(held[w].accuracy) }, { num: fmt(held[w].macro_f1) }]),
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
      actions(run, refresh, answer),
      h("section", { "aria-labelledby": "history" }, h("h2", { id: "history" }, "Timeline"), timeline(run)),
      h("section", { "aria-labelledby": "metrics" }, h("h2", { id: "metrics" }, "Metrics"), metricsSection(run)),
      tuningSection(run.tuning), evaluationSection(run), productionSection(run.production), costSection(run.cost)]));
    announce(`run ${id} is ${run.state}`);
    if (ACTIVE.includes(run.state)) poll(refresh);
  };
  render(`Run ${id}`, holder);
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
fetch("/ui/info").then((r) => r.json()).then((info) => {
  document.getElementById("backend").textContent = `API: ${info.backend}`;
}, () => {});
route();
