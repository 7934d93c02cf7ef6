// Small SVG charts: axes with units, thresholds drawn, and a data table as the text
// alternative. No library: nothing is fetched at run time.

const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#0b5cad", "#b35900", "#1b6e20", "#6a3d9a", "#a4161a"];
let counter = 0;

function el(name, attrs = {}, text = "") {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text) node.textContent = text;
  return node;
}

function ticks(min, max, count = 5) {
  if (min === max) return [min];
  const step = (max - min) / (count - 1);
  return Array.from({ length: count }, (_, i) => min + i * step);
}

function fmt(value) {
  if (!Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 0.01 || abs >= 100000)) return value.toExponential(2);
  return Number(value.toFixed(abs < 10 ? 3 : 1)).toString();
}

// series: [{name, points: [[x, y], ...], line: true|false, dashed}]; thresholds: [{value, label}];
// markers: [{x, label}], vertical lines (an alarm's state change), listed under the chart.
// xRange/yRange: [min, max] to fix an axis (a time window, a probability's 0..1).
export function lineChart({ title, description, xLabel, yLabel, series, thresholds = [], markers = [], xFormat = fmt,
  integerX = false, xRange = null, yRange = null }) {
  const id = `chart-${++counter}`;
  const figure = document.createElement("figure");
  figure.tabIndex = 0;
  figure.setAttribute("aria-labelledby", `${id}-caption`);
  const caption = document.createElement("figcaption");
  caption.id = `${id}-caption`;
  caption.textContent = title;
  figure.append(caption);
  const width = 560, height = 260, left = 62, right = 16, top = 12, bottom = 44;
  const points = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const ys = points.map(([, y]) => y).concat(thresholds.map((t) => t.value));
  const xs = points.map(([x]) => x);
  let [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  if (!points.length) { xMin = 0; xMax = 1; yMin = 0; yMax = 1; }
  if (xRange) [xMin, xMax] = xRange;
  if (yRange) [yMin, yMax] = [Math.min(yRange[0], yMin), Math.max(yRange[1], yMax)];
  if (xMin === xMax) { xMin -= 1; xMax += 1; }
  if (yMin === yMax) { yMin -= Math.abs(yMin) * 0.1 || 1; yMax += Math.abs(yMax) * 0.1 || 1; }
  if (!yRange) {
    const pad = (yMax - yMin) * 0.08;
    yMin -= pad; yMax += pad;
  }
  const X = (x) => left + ((x - xMin) / (xMax - xMin)) * (width - left - right);
  const Y = (y) => top + (1 - (y - yMin) / (yMax - yMin)) * (height - top - bottom);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-labelledby": `${id}-t ${id}-d` });
  svg.append(el("title", { id: `${id}-t` }, title));
  svg.append(el("desc", { id: `${id}-d` }, description || `${yLabel} against ${xLabel}; the table below lists every value.`));
  for (const t of ticks(yMin, yMax)) {
    svg.append(el("line", { x1: left, x2: width - right, y1: Y(t), y2: Y(t), class: "grid" }));
    svg.append(el("text", { x: left - 6, y: Y(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  const xTicks = integerX
    ? [...new Set(ticks(Math.ceil(xMin), Math.floor(xMax)).map(Math.round))].filter((t) => t >= xMin && t <= xMax)
    : ticks(xMin, xMax);
  xTicks.forEach((t, i) => {
    // The first and last labels are anchored inside the plot, so neither is cut off.
    const anchor = xTicks.length > 1 && i === xTicks.length - 1 ? "end" : (xTicks.length > 1 && i === 0 ? "start" : "middle");
    svg.append(el("text", { x: X(t), y: height - bottom + 16, "text-anchor": anchor }, xFormat(t)));
  });
  svg.append(el("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }));
  svg.append(el("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  svg.append(el("text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" }, xLabel));
  svg.append(el("text", { x: 14, y: (top + height - bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 14 ${(top + height - bottom) / 2})` }, yLabel));
  for (const t of thresholds) {
    svg.append(el("line", { x1: left, x2: width - right, y1: Y(t.value), y2: Y(t.value), class: "threshold" }));
    svg.append(el("text", { x: width - right - 4, y: Y(t.value) - 4, "text-anchor": "end" }, `${t.label} ${fmt(t.value)}`));
  }
  for (const m of markers) {
    if (!(m.x >= xMin && m.x <= xMax)) continue;
    const line = el("line", { x1: X(m.x), x2: X(m.x), y1: top, y2: height - bottom, class: "marker" });
    line.append(el("title", {}, `${xFormat(m.x)}: ${m.label}`));
    svg.append(line);
  }
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const valid = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (s.line !== false && valid.length > 1) {
      const d = valid.map(([x, y], j) => `${j ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
      svg.append(el("path", { d, fill: "none", stroke: colour, "stroke-width": 2, ...(s.dashed ? { "stroke-dasharray": "6 3" } : {}) }));
    }
    for (const [x, y] of valid) {
      const dot = el("circle", { cx: X(x), cy: Y(y), r: 3.5, fill: colour });
      dot.append(el("title", {}, `${s.name}: ${xFormat(x)}, ${fmt(y)}`));
      svg.append(dot);
    }
  });
  figure.append(svg);
  if (!points.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "No data points in this window.";
    figure.append(none);
  }
  if (series.length > 1 || thresholds.length || markers.length) {
    const legend = document.createElement("p");
    legend.className = "muted";
    legend.textContent = series.map((s, i) => `${["blue", "orange", "green", "purple", "red"][i % 5]}${s.dashed ? " dashed" : ""}: ${s.name}`)
      .concat(thresholds.map((t) => `red dashed: ${t.label}`))
      .concat(markers.length ? ["grey vertical lines: alarm state changes (listed below)"] : []).join(" · ");
    figure.append(legend);
  }
  if (markers.length) {
    const list = document.createElement("ul");
    list.className = "markers";
    for (const m of markers) {
      const item = document.createElement("li");
      item.textContent = `${xFormat(m.x)}: ${m.label}`;
      list.append(item);
    }
    figure.append(list);
  }
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Data table";
  details.append(summary);
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const name of ["series", xLabel, yLabel]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.append(th);
  }
  for (const s of series) {
    for (const [x, y] of s.points) {
      const row = table.insertRow();
      row.insertCell().textContent = s.name;
      row.insertCell().textContent = xFormat(x);
      const cell = row.insertCell();
      cell.textContent = fmt(y);
      cell.className = "num";
    }
  }
  details.append(table);
  figure.append(details);
  return figure;
}

export { fmt };
