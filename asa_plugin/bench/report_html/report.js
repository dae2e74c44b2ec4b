// report.html of an `advrobust bench` (asa_plugin/bench/html.py inlines this file).
// Every number shown in the overview is read from report.json (DATA.report); this script formats and
// filters, and computes no statistic. The examples and the paired view read results.jsonl's rows.
"use strict";

const DATA = JSON.parse(document.getElementById("bench-data").textContent);
const REPORT = DATA.report;
const FIELD = Object.fromEntries(DATA.fields.map((name, i) => [name, i]));
const STRING_FIELDS = ["outcome", "original_text", "perturbed_text", "original_text_pair", "perturbed_text_pair"];

// ---------- small helpers ----------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "html") node.innerHTML = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
function escapeHtml(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
const isNum = (v) => typeof v === "number" && isFinite(v);
const pct = (v) => (isNum(v) ? (100 * v).toFixed(1) : "n/a");
const num = (v, digits = 1) => (isNum(v) ? v.toFixed(digits) : "n/a");
const points = (v) => (v >= 0 ? "+" : "") + (100 * v).toFixed(1);
function pValue(p) {
  if (!isNum(p)) return "n/a";
  return p >= 0.001 ? String(Number(p.toPrecision(3))) : p.toExponential(2);
}
function spread(cell, key, fmt = pct) {
  let text = fmt(cell[key]);
  if (isNum(cell[key + "_std"])) text += " ± " + fmt(cell[key + "_std"]);
  return text;
}

// ---------- results.jsonl rows ----------
function decodeRow(row) {
  const out = {};
  DATA.fields.forEach((name, i) => {
    const value = row[i];
    out[name] = STRING_FIELDS.includes(name) && value !== null ? DATA.strings[value] : value;
  });
  out.textId = row[FIELD.original_text];
  return out;
}
const ATTACKS = DATA.examples.map((a) => ({ ...a, decoded: null }));
function rowsOf(attack) {
  if (!attack.decoded) attack.decoded = attack.rows.map(decodeRow);
  return attack.decoded;
}
function findAttack(run, recipe) {
  return ATTACKS.find((a) => a.run === run && a.recipe === recipe);
}
// Correct after the attack, as asa_plugin/bench/stats.py counts it (unperturbable rows are left out there).
const ROBUST = { successful: false, failed: true, maximized: true, skipped: false };

// ---------- word and character differences ----------
function lcsPairs(a, b) {
  // Longest common subsequence of two arrays: the matched index pairs, in order.
  const n = a.length, m = b.length;
  const table = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
  const pairs = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { pairs.push([i, j]); i++; j++; }
    else if (table[i + 1][j] >= table[i][j + 1]) i++;
    else j++;
  }
  return pairs;
}
function charMarks(word, other) {
  // The word with the characters absent from `other` (by LCS) wrapped in <span class="c">: a character edit
  // (DeepWordBug's "sense" -> "seVnse"). A word replaced by a different word (PWWS's synonym: less than
  // half its characters in common) is marked as a whole, without character marks.
  const chars = Array.from(word), common = lcsPairs(chars, Array.from(other));
  if (2 * common.length < Math.max(chars.length, Array.from(other).length)) return escapeHtml(word);
  const kept = new Set(common.map((p) => p[0]));
  return chars.map((c, i) => (kept.has(i) ? escapeHtml(c) : `<span class="c">${escapeHtml(c)}</span>`)).join("");
}
function diffWords(original, perturbed) {
  // HTML of both texts with changed words in <mark class="w"> and, for a word replaced by another,
  // the changed characters inside it marked too. Words are whitespace-separated tokens.
  const split = (t) => t.split(/(\s+)/).filter((s) => s.length);
  const a = split(original), b = split(perturbed);
  const wordsA = a.map((t, i) => [t, i]).filter(([t]) => !/^\s+$/.test(t));
  const wordsB = b.map((t, i) => [t, i]).filter(([t]) => !/^\s+$/.test(t));
  const pairs = lcsPairs(wordsA.map((w) => w[0]), wordsB.map((w) => w[0]));
  const htmlA = a.map(escapeHtml), htmlB = b.map(escapeHtml);
  let changed = 0;
  const mark = (html, tokens, k, inner) => { html[tokens[k][1]] = `<mark class="w">${inner}</mark>`; };
  let pa = 0, pb = 0;
  for (const [ia, ib] of [...pairs, [wordsA.length, wordsB.length]]) {
    const gapA = ia - pa, gapB = ib - pb;
    for (let k = 0; k < Math.max(gapA, gapB); k++) {
      const inA = k < gapA, inB = k < gapB;
      if (inA && inB) {
        mark(htmlA, wordsA, pa + k, charMarks(wordsA[pa + k][0], wordsB[pb + k][0]));
        mark(htmlB, wordsB, pb + k, charMarks(wordsB[pb + k][0], wordsA[pa + k][0]));
      } else if (inA) mark(htmlA, wordsA, pa + k, escapeHtml(wordsA[pa + k][0]));
      else mark(htmlB, wordsB, pb + k, escapeHtml(wordsB[pb + k][0]));
      changed++;
    }
    pa = ia + 1; pb = ib + 1;
  }
  return { original: htmlA.join(""), perturbed: htmlB.join(""), changed };
}

// ---------- overview ----------
function cellClass(label) { return label.kind; }
function overviewTable() {
  const baseline = REPORT.baseline;
  const head = ["Defence", "Recipe", "Seeds", "n", "Clean (dev)", "Clean (attacked)", "Under attack [95 % CI]",
    "Success", "Words %", "Queries", "Train s (CPU s)", `Δ under attack vs ${baseline || "baseline"}`,
    "McNemar p", "Holm p", "Detectable Δ", "Degenerate check", "Verdict"];
  const table = el("table", { id: "overview-table" },
    el("thead", {}, el("tr", {}, head.map((h, i) => el("th", { class: i < 3 ? "text" : null }, h)))));
  const body = el("tbody");
  REPORT.cells.forEach((cell, i) => {
    const label = DATA.labels[i], comparison = cell.comparison || {};
    const done = comparison.status === "done", missing = cell.status === "missing";
    const tests = done ? comparison.mcnemar : [];
    const ci = cell.accuracy_under_attack_ci;
    // As in report.md: a degenerate model's accuracy under attack and Δ are not robustness (values in report.json)
    const under = missing ? "missing" : cell.degenerate ? "degenerate"
      : pct(cell.accuracy_under_attack) + (ci ? ` [${pct(ci[0])}, ${pct(ci[1])}]` : "");
    const delta = done ? comparison.accuracy_under_attack : null;
    const detect = done && comparison.detectable_difference ? comparison.detectable_difference.difference : null;
    let train = spread(cell, "train_seconds", num);
    if (isNum(cell.train_cpu_seconds)) train += ` (${spread(cell, "train_cpu_seconds", num)})`;
    const td = (key, text, cls) => el("td", { "data-key": key, class: cls }, text);
    const row = el("tr", { class: `cell-row ${cellClass(label)}`, "data-defence": cell.defence, "data-recipe": cell.recipe,
                           title: "click: this cell's attacked examples" },
      td("defence", cell.defence, "text"), td("recipe", cell.recipe, "text"),
      td("seeds", (cell.seeds_done || []).join(", ") || "missing", "text"), td("num_examples", num(cell.num_examples, 0)),
      td("eval_accuracy", spread(cell, "eval_accuracy")), td("clean_accuracy", missing ? "missing" : spread(cell, "clean_accuracy")),
      td("accuracy_under_attack", under), td("attack_success_rate", missing ? "missing" : spread(cell, "attack_success_rate")),
      td("avg_words_perturbed_pct", missing ? "missing" : spread(cell, "avg_words_perturbed_pct", num)),
      td("avg_queries", missing ? "missing" : spread(cell, "avg_queries", num)), td("train_seconds", train),
      td("delta", comparison.degenerate ? "degenerate" : delta ? `${points(delta.delta)} [${points(delta.ci[0])}, ${points(delta.ci[1])}]`
        : label.kind === "baseline" ? "baseline" : "n/a"),
      td("p_value", done ? tests.map((t) => pValue(t.p_value)).join("; ") : "n/a"),
      td("p_holm", done ? tests.map((t) => pValue(t.p_holm)).join("; ") : "n/a"),
      td("detectable", isNum(detect) ? "±" + pct(detect) : "n/a"),
      td("check", label.check, "text"), td("verdict", label.verdict, "text"));
    row.addEventListener("click", () => { showExamples(cell.defence, cell.recipe); });
    body.append(row);
  });
  table.append(body);
  return table;
}
function settingsList() {
  const list = el("dl", { class: "settings" });
  for (const [section, values] of Object.entries(REPORT.settings || {}))
    list.append(el("dt", {}, `[${section}]`), el("dd", {}, Object.entries(values).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ")));
  list.append(el("dt", {}, "seeds"), el("dd", {}, (REPORT.seeds || []).join(", ")));
  for (const [label, params] of Object.entries(REPORT.defence_params || {}))
    list.append(el("dt", {}, `defence ${label}`), el("dd", {}, JSON.stringify(params)));
  for (const m of REPORT.machines || [])
    list.append(el("dt", {}, "machine"), el("dd", {}, `${m.platform || "?"}; CPU ${m.cpu || "?"} (${m.cpu_count || "?"} cores); GPU ${m.gpu || "none"}; torch ${m.torch || "?"}`));
  return list;
}
function renderOverview() {
  const stats = REPORT.statistics || {};
  const view = document.getElementById("overview");
  const scale = `${REPORT.defences.length} labels x ${REPORT.recipes.length} recipes, seeds ${REPORT.seeds.join(", ")}; ` +
    `${ATTACKS.length} finished attacks, ${REPORT.training.filter((t) => t.status === "done").length} trained runs` +
    (REPORT.missing.length ? `; ${REPORT.missing.length} missing (${REPORT.missing.join(", ")})` : "; nothing missing");
  view.append(
    el("p", { class: "note" }, REPORT.config ? `Config: ${REPORT.config}. ` : "", `Scale: ${scale}.`),
    el("h2", {}, "Defence x attack"),
    el("p", { class: "legend" }, el("span", { style: "background: var(--higher)" }, "significantly higher"),
      el("span", { style: "background: var(--lower)" }, "significantly lower"), el("span", { style: "background: var(--ns)" }, "not significant"),
      el("span", { style: "background: var(--degenerate)" }, "degenerate"), el("span", { style: "background: var(--base)" }, "baseline"),
      "Click a row for its examples."),
    el("div", { class: "table-wrap" }, overviewTable()),
    el("p", { class: "note", id: "multiple-comparisons" },
      `Accuracies in %. Δ: paired difference with ${REPORT.baseline} in points with its ${Math.round(100 * (stats.level || 0.95))} % bootstrap ` +
      `interval (${stats.bootstrap_resamples} resamples). McNemar p: exact test per seed. ` +
      `Multiple comparisons: this table makes ${stats.holm_family ?? "several"} McNemar tests (every defence x recipe x seed); ` +
      `at p < 0.05 about one in twenty would differ by chance alone. Holm p is each test's p adjusted by Holm's method over all of them ` +
      `(family-wise error rate 0.05 where Holm p < 0.05). Detectable Δ: the smallest difference McNemar's test finds with ` +
      `${Math.round(100 * (stats.power || 0.8))} % power at p < ${stats.alpha || 0.05}, from the discordant rate and n (Connor 1987): a ` +
      `"not significant" with a large detectable Δ means too few examples, not no difference. All values from report.json.`),
    el("h2", {}, "Plots"),
    el("div", { class: "plots" }, DATA.plots.map((p) => p.src
      ? el("figure", {}, el("img", { src: p.src, alt: p.title }), el("figcaption", {}, p.title))
      : el("p", { class: "empty" }, `${p.title}: not drawn (${p.skipped})`))),
    el("h2", {}, "Settings"), settingsList());
}

// ---------- examples browser ----------
const state = { attack: 0, outcome: "all", search: "", sort: "index" };
function exampleCard(row, runLabel) {
  const diff = diffWords(row.original_text || "", row.perturbed_text || "");
  const conf = (c) => (isNum(c) ? ` (${(100 * c).toFixed(1)} %)` : "");
  const lines = [el("div", { class: "text-line orig" }, el("span", { class: "lab" }, "original"), el("span", { class: "txt", html: diff.original })),
    // a failed attack's text is its last attempt, which did not flip the prediction
    el("div", { class: "text-line pert" }, el("span", { class: "lab" }, row.outcome === "failed" ? "last attempt" : "perturbed"),
      el("span", { class: "txt", html: diff.perturbed }))];
  if (row.original_text_pair !== null && row.original_text_pair !== undefined) {
    const pair = diffWords(row.original_text_pair, row.perturbed_text_pair || "");
    lines.push(el("div", { class: "text-line orig" }, el("span", { class: "lab" }, "original 2"), el("span", { html: pair.original })),
      el("div", { class: "text-line pert" }, el("span", { class: "lab" }, "perturbed 2"), el("span", { html: pair.perturbed })));
  }
  return el("div", { class: "example", "data-index": row.index, "data-outcome": row.outcome },
    el("div", { class: "meta" }, runLabel ? `${runLabel} · ` : "", `#${row.index} `, el("span", { class: `badge ${row.outcome}` }, row.outcome),
      ` · gold ${row.gold_label} · prediction ${row.original_prediction}${conf(row.original_confidence)} → ` +
      `${row.perturbed_prediction}${conf(row.perturbed_confidence)} · ${row.queries} queries · ` +
      `${row.words_perturbed ?? "?"} of ${row.num_words ?? "?"} words perturbed`),
    lines);
}
function visibleRows() {
  const attack = ATTACKS[state.attack];
  if (!attack) return [];
  const needle = state.search.trim().toLowerCase();
  let rows = rowsOf(attack).filter((r) => (state.outcome === "all" || r.outcome === state.outcome) &&
    (!needle || (r.original_text || "").toLowerCase().includes(needle) || (r.perturbed_text || "").toLowerCase().includes(needle)));
  const by = { queries: (r) => r.queries || 0, words: (r) => r.words_perturbed || 0 }[state.sort];
  if (by) rows = [...rows].sort((x, y) => by(y) - by(x) || x.index - y.index);
  return rows;
}
function renderExampleList() {
  const list = document.getElementById("example-list");
  const rows = visibleRows(), total = ATTACKS[state.attack] ? ATTACKS[state.attack].rows.length : 0;
  document.getElementById("example-count").textContent = `${rows.length} of ${total} examples`;
  list.replaceChildren(...rows.map((r) => exampleCard(r)));
  if (!rows.length) list.append(el("p", { class: "empty" }, "no example matches"));
}
function renderExamples() {
  const view = document.getElementById("examples");
  const attackSelect = el("select", { id: "example-attack", onchange: (e) => { state.attack = Number(e.target.value); renderExampleList(); } },
    ATTACKS.map((a, i) => el("option", { value: i }, `${a.run} / ${a.recipe}`)));
  const outcomes = ["all", "successful", "failed", "skipped", "maximized", "unperturbable"];
  view.append(el("h2", {}, "Attacked examples"),
    el("p", { class: "note" }, "Each example attacked in one cell: the original and the perturbed text (changed words marked; " +
      "inside a replaced word, the changed characters), the prediction with its confidence before → after, queries and words perturbed."),
    el("div", { class: "controls" },
      el("label", {}, "model / recipe ", attackSelect),
      el("label", {}, "outcome ", el("select", { id: "example-outcome", onchange: (e) => { state.outcome = e.target.value; renderExampleList(); } },
        outcomes.map((o) => el("option", { value: o }, o)))),
      el("label", {}, "search ", el("input", { id: "example-search", type: "search", placeholder: "text contains…",
        oninput: (e) => { state.search = e.target.value; renderExampleList(); } })),
      el("label", {}, "sort ", el("select", { id: "example-sort", onchange: (e) => { state.sort = e.target.value; renderExampleList(); } },
        el("option", { value: "index" }, "by index"), el("option", { value: "queries" }, "most queries first"),
        el("option", { value: "words" }, "most words changed first"))),
      el("span", { class: "count", id: "example-count" })),
    el("div", { id: "example-list" }));
  if (!ATTACKS.length) view.append(el("p", { class: "empty" }, "no attack has finished yet"));
}
function showExamples(defence, recipe) {
  const i = ATTACKS.findIndex((a) => a.defence === defence && a.recipe === recipe);
  if (i < 0) return;
  state.attack = i;
  document.getElementById("example-attack").value = String(i);
  renderExampleList();
  showTab("examples");
}

// ---------- paired view ----------
function discordant(rowsA, rowsB) {
  // Examples both models were attacked on (same index, same text, not unperturbable) that exactly one
  // keeps correct after the attack: McNemar's b (only A) and c (only B), as asa_plugin/bench/stats.py pairs them.
  const byIndex = new Map(rowsB.map((r) => [r.index, r]));
  const onlyA = [], onlyB = [];
  for (const a of rowsA) {
    const b = byIndex.get(a.index);
    if (!b || b.textId !== a.textId || !(a.outcome in ROBUST) || !(b.outcome in ROBUST)) continue;
    if (ROBUST[a.outcome] && !ROBUST[b.outcome]) onlyA.push([a, b]);
    if (!ROBUST[a.outcome] && ROBUST[b.outcome]) onlyB.push([a, b]);
  }
  return { onlyA, onlyB };
}
function pairCard([a, b], labelA, labelB) {
  const side = (row, label) => {
    const diff = diffWords(row.original_text || "", row.perturbed_text || "");
    return el("div", { class: "side" }, el("span", { class: "who" }, `${label}: `), el("span", { class: `badge ${row.outcome}` }, row.outcome),
      ` prediction ${row.original_prediction} → ${row.perturbed_prediction}, ${row.queries} queries, ${row.words_perturbed ?? "?"} words`,
      el("div", { class: "text-line pert" }, el("span", { class: "txt", html: diff.perturbed })));
  };
  return el("div", { class: "pair", "data-index": a.index },
    el("div", { class: "text-line" }, el("span", { class: "lab" }, `#${a.index} gold ${a.gold_label}`), a.original_text),
    side(a, labelA), side(b, labelB));
}
function runsOfLabel(label, recipe) {
  return ATTACKS.filter((a) => a.defence === label && a.recipe === recipe);
}
function renderPairLists() {
  const get = (id) => document.getElementById(id).value;
  const labelA = get("pair-a"), labelB = get("pair-b"), recipe = get("pair-recipe");
  const out = document.getElementById("pair-lists");
  out.replaceChildren();
  const runsA = runsOfLabel(labelA, recipe), runsB = runsOfLabel(labelB, recipe);
  const seeds = runsA.map((a) => a.seed).filter((s) => runsB.some((b) => b.seed === s));
  if (!seeds.length) { out.append(el("p", { class: "empty" }, `${labelA} and ${labelB} share no finished seed under ${recipe}`)); return; }
  const cell = REPORT.cells.find((c) => c.defence === labelA && c.recipe === recipe);
  const reported = cell && cell.comparison && cell.comparison.status === "done" && cell.comparison.baseline === labelB ? cell.comparison : null;
  for (const seed of seeds) {
    const runA = runsA.find((a) => a.seed === seed), runB = runsB.find((b) => b.seed === seed);
    const { onlyA, onlyB } = discordant(rowsOf(runA), rowsOf(runB));
    const test = reported ? reported.mcnemar.find((m) => m.seed === seed) : null;
    const stat = test ? `report.json: only ${labelA} ${test.defence_only_correct}, only ${labelB} ${test.baseline_only_correct}, ` +
      `McNemar p ${pValue(test.p_value)}, Holm p ${pValue(test.p_holm)}.`
      : `Statistics of this pair: advrobust compare DIR ${labelA} --against ${labelB}.`;
    const column = (id, title, items, note) => el("div", { id, "data-seed": seed },
      el("h3", {}, `${title} (${items.length})`), el("p", { class: "note" }, note),
      items.length ? items.map((p) => pairCard(p, `${runA.run}`, `${runB.run}`)) : el("p", { class: "empty" }, "none"));
    out.append(el("h2", {}, `Seed ${seed}: ${runA.run} vs ${runB.run} under ${recipe}`), el("p", { class: "note" }, stat),
      el("div", { class: "pair-grid" },
        column(`only-a-${seed}`, `Only ${labelA} survives (McNemar's b)`, onlyA, `${labelA} still correct after the attack, ${labelB} flipped`),
        column(`only-b-${seed}`, `Only ${labelB} survives (McNemar's c)`, onlyB, `${labelB} still correct after the attack, ${labelA} flipped`)));
  }
}
function renderPaired() {
  const view = document.getElementById("paired");
  const labels = REPORT.defences, baseline = REPORT.baseline || labels[0];
  // "#/paired/A/B/RECIPE" opens that pair (a link to one comparison); else a defence against the baseline
  const [tab, wantA, wantB, wantRecipe] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const asked = tab === "paired" && labels.includes(wantA) && labels.includes(wantB);
  const first = asked ? wantA : labels.find((l) => l !== baseline) || labels[0];
  const second = asked ? wantB : baseline;
  const recipe = asked && REPORT.recipes.includes(wantRecipe) ? wantRecipe : REPORT.recipes[0];
  const pick = (id, value) => el("select", { id, onchange: renderPairLists }, labels.map((l) => el("option", { value: l, selected: l === value ? "" : null }, l)));
  view.append(el("h2", {}, "Paired view"),
    el("p", { class: "note" }, "The examples behind McNemar's test: those exactly one of two models keeps correct after the attack, " +
      "with each model's perturbation side by side. Any two labels of the bench; by default a defence against the baseline."),
    el("div", { class: "controls" }, el("label", {}, "label A ", pick("pair-a", first)), el("label", {}, "against B ", pick("pair-b", second)),
      el("label", {}, "recipe ", el("select", { id: "pair-recipe", onchange: renderPairLists },
        REPORT.recipes.map((r) => el("option", { value: r, selected: r === recipe ? "" : null }, r))))),
    el("div", { id: "pair-lists" }));
  renderPairLists();
}

// ---------- training curves and ASA ----------
function lineChart(title, series, caption) {
  // series: [{name, points: [[x, y], ...]}]; a small SVG line chart with axes and a legend.
  const W = 320, H = 170, L = 50, R = 8, T = 18, B = 28;
  const all = series.flatMap((s) => s.points).filter((p) => isNum(p[0]) && isNum(p[1]));
  if (!all.length) return null;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R), sy = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  let svg = `<svg width="${W}" height="${H}" role="img" aria-label="${escapeHtml(title)}">`;
  svg += `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>`;
  svg += `<text x="${L - 4}" y="${T + 4}" text-anchor="end">${num(y1, 2)}</text><text x="${L - 4}" y="${H - B}" text-anchor="end">${num(y0, 2)}</text>`;
  svg += `<text x="${L}" y="${H - 8}">${x0}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${x1} (step)</text>`;
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => isNum(p[1])).map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg += `<polyline fill="none" stroke="${colours[i % colours.length]}" stroke-width="1.5" points="${pts}"><title>${escapeHtml(s.name)}</title></polyline>`;
    if (series.length > 1) svg += `<text x="${W - R}" y="${T + 10 * i}" text-anchor="end" style="fill:${colours[i % colours.length]}">${escapeHtml(s.name)}</text>`;
  });
  svg += "</svg>";
  return el("div", { class: "chart" }, el("div", {}, title), el("div", { html: svg }),
    caption ? el("div", { class: "note" }, caption) : null);
}
function renderTraining() {
  const view = document.getElementById("training");
  view.append(el("h2", {}, "Training curves"), el("p", { class: "note" }, "From each run's metrics.json (step_history every train.log_every_steps steps)."));
  const charts = el("div", { class: "charts" });
  for (const c of DATA.curves) {
    const row = REPORT.training.find((t) => t.run === c.run) || {};
    const evals = c.eval_accuracy.filter((e) => isNum(e[1])).map((e) => `${pct(e[1])} (step ${e[0]})`).join(", ");
    const cpu = isNum(row.train_cpu_seconds) ? `, CPU ${num(row.train_cpu_seconds)} s` : "";
    const caption = `dev accuracy ${evals || "n/a"}; ${num(row.train_seconds)} s wall${cpu}`;
    const loss = lineChart(`${c.run}: training loss`, [{ name: "loss", points: c.series.loss || [] }], caption);
    if (loss) charts.append(loss);
  }
  view.append(charts.childNodes.length ? charts : el("p", { class: "empty" }, "no run recorded step_history"));
  const asa = DATA.curves.filter((c) => c.series.asa_mask_ratio_per_layer);
  view.append(el("h2", {}, "ASA mask ratios"));
  if (!asa.length) view.append(el("p", { class: "empty" }, "no run of this bench includes ASA"));
  const asaCharts = el("div", { class: "charts" });
  for (const c of asa) {
    const layers = c.series.asa_mask_ratio_per_layer[0][1].length;
    const series = Array.from({ length: layers }, (_, k) => ({ name: `layer ${k}`, points: c.series.asa_mask_ratio_per_layer.map(([s, v]) => [s, v[k]]) }));
    asaCharts.append(lineChart(`${c.run}: fraction masked per layer`, series));
  }
  view.append(asaCharts);
  const map = DATA.plots.find((p) => p.name === "asa_map");
  if (map && map.src) view.append(el("h3", {}, map.title), el("img", { src: map.src, alt: map.title, style: "max-width: 100%" }));
  else if (map) view.append(el("p", { class: "empty" }, `${map.title}: not drawn (${map.skipped})`));
}

// ---------- tabs ----------
function showTab(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== name;
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.tab === name);
  window.scrollTo(0, 0);
  try {
    // "#/name", not "#name": a fragment naming the section's id would scroll the page under the header
    if (location.hash.replace(/^#\/?/, "").split("/")[0] !== name) history.replaceState(null, "", "#/" + name);
  } catch (error) { /* some browsers refuse history changes on file:// pages: the tab still shows */ }
}
document.getElementById("title").textContent = `Robustness bench: ${REPORT.bench_dir}`;
renderOverview();
renderExamples();
renderExampleList();
renderPaired();
renderTraining();
for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => showTab(button.dataset.tab));
const opened = location.hash.replace(/^#\/?/, "").split("/")[0];
showTab(["overview", "examples", "paired", "training"].includes(opened) ? opened : "overview");
document.body.dataset.ready = "true";
