// Checks the shipped Grafana dashboard and Prometheus rules against a real
// Prometheus that scrapes a real sfu-server under load (started by
// scripts/ops-test.sh): every expression evaluates without error, and every
// expression whose metrics the server exports returns data.
//
// Environment:
//   PROM_URL     Prometheus' base URL (http://127.0.0.1:PORT)
//   SFU_URL      the server's base URL (its /metrics says which metrics exist)
//   DASHBOARD    the dashboard JSON (deploy/grafana/sfu-server.json)
//   DEADLINE_MS  how long to wait for Prometheus to have enough data (60000)
//
// No dependencies: Node's fetch and JSON.
import { readFileSync } from "node:fs";

const PROM = process.env.PROM_URL;
const SFU = process.env.SFU_URL;
const DASHBOARD = process.env.DASHBOARD;
const DEADLINE_MS = Number(process.env.DEADLINE_MS ?? 60000);
if (!PROM || !SFU || !DASHBOARD) {
  console.error("prometheus-check: set PROM_URL, SFU_URL and DASHBOARD");
  process.exit(2);
}

// Metrics the dashboard or rules use that this server does not export
// (yet, or not in this configuration), and why. Anything else a query names
// must be in /metrics: a misspelt metric evaluates fine and shows nothing.
const NOT_EXPORTED_HERE = {
  sfu_tls_handshakes_total: "only when the node serves TLS itself (this one does not)",
  sfu_tls_reloads_total: "only when the node serves TLS itself (this one does not)",
};

const failures = [];
const fail = (m) => {
  failures.push(m);
  console.log(`FAIL ${m}`);
};

async function api(path, params = {}) {
  const url = new URL(`/api/v1/${path}`, PROM);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const r = await fetch(url);
  const body = await r.json();
  if (body.status !== "success") throw new Error(`${path} ${JSON.stringify(params)}: ${body.errorType}: ${body.error}`);
  return body.data;
}

async function until(what, probe) {
  const end = Date.now() + DEADLINE_MS;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last === true) return;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > end) throw new Error(`${what}: not within ${DEADLINE_MS} ms (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

// Metric families the server exports now (histograms as their base name).
const exposition = await (await fetch(new URL("/metrics", SFU))).text();
const exported = new Set(
  [...exposition.matchAll(/^# TYPE (\S+) \S+$/gm)].map((m) => m[1]),
);
exported.add("up");

const rules = (await api("rules")).groups.flatMap((g) => g.rules.map((r) => ({ ...r, group: g.name })));
const recorded = new Set(rules.filter((r) => r.type === "recording").map((r) => r.name));

// The metric names an expression reads: what is left after removing
// strings, label lists, matchers, range windows, numbers and PromQL's own
// words. A histogram's `_bucket` series count as the histogram.
const PROMQL_WORDS = new Set(
  ("sum min max avg count stddev stdvar topk bottomk quantile by without on ignoring group_left group_right " +
    "and or unless bool offset rate irate increase delta deriv resets changes histogram_quantile clamp_min " +
    "clamp_max abs absent vector scalar time round floor ceil sort sort_desc label_replace " +
    "count_over_time max_over_time min_over_time avg_over_time").split(" "),
);
function metricsOf(expr) {
  const bare = expr
    .replace(/"[^"]*"/g, '""')
    .replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, "")
    .replace(/\{[^}]*\}/g, "")
    .replace(/\[[^\]]*\]/g, "")
    .replace(/\b\d+(\.\d+)?(e[-+]?\d+)?\b/gi, "");
  const names = [...bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)].map((m) => m[0]);
  return [...new Set(names.filter((n) => !PROMQL_WORDS.has(n)))].map((n) =>
    exported.has(n) ? n : n.replace(/_(bucket|sum|count)$/, ""),
  );
}

/** Why an expression may return nothing here, or null if it must return data. */
function whyEmptyIsFine(names) {
  for (const n of names) {
    if (exported.has(n) || recorded.has(n)) continue;
    if (n in NOT_EXPORTED_HERE) return `${n}: ${NOT_EXPORTED_HERE[n]}`;
    return null;
  }
  return undefined; // every metric exists: data expected
}

// --- wait for enough data ----------------------------------------------------
await until("Prometheus scraped the server 10 times", async () => {
  const r = await api("query", { query: 'count_over_time(up{job="sfu"}[5m])' });
  return Number(r.result[0]?.value[1] ?? 0) >= 10 || r.result;
});
await until("members joined and audio flowed, as Prometheus sees it", async () => {
  const r = await api("query", { query: 'sum(rate(sfu_rtp_forwarded_total{job="sfu"}[30s])) > 0 and on() sum(sfu_members{job="sfu"}) > 0' });
  return r.result.length > 0 || "no forwarded audio yet";
});
const loadSeen = Date.now();
await until("every rule evaluated since the load was seen", async () => {
  const rs = (await api("rules")).groups.flatMap((g) => g.rules);
  const pending = rs.filter((r) => !(Date.parse(r.lastEvaluation) > loadSeen));
  return pending.length === 0 || pending.map((r) => r.name);
});

// --- rules -------------------------------------------------------------------
const fresh = (await api("rules")).groups.flatMap((g) => g.rules);
console.log(`rules: ${fresh.length} (${recorded.size} recording)`);
for (const r of fresh) {
  if (r.health !== "ok") fail(`rule ${r.name}: health ${r.health}: ${r.lastError}`);
  for (const n of metricsOf(r.query)) {
    if (!exported.has(n) && !recorded.has(n) && !(n in NOT_EXPORTED_HERE)) {
      fail(`rule ${r.name} reads ${n}, which the server does not export`);
    }
  }
  try {
    const data = await api("query", { query: r.query });
    if (r.type === "recording") {
      const why = whyEmptyIsFine(metricsOf(r.query));
      if (data.result.length === 0 && why === undefined) fail(`recording rule ${r.name} returned no data`);
      else if (data.result.some((x) => x.value[1] === "NaN")) fail(`recording rule ${r.name} is NaN (no observations in its window)`);
      else console.log(`ok   ${r.name}: ${data.result.map((s) => s.value[1]).join(", ") || `(empty: ${why})`}`);
    } else {
      console.log(`ok   alert ${r.name}: ${r.state}, ${data.result.length} series now`);
    }
  } catch (e) {
    fail(`rule ${r.name}: ${e.message}`);
  }
}

// --- dashboard ---------------------------------------------------------------
const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8"));
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const ids = new Set();
let queries = 0;
for (const p of panels) {
  if (ids.has(p.id)) fail(`dashboard: panel id ${p.id} twice`);
  ids.add(p.id);
  if (!p.gridPos) fail(`dashboard: panel ${p.title} has no gridPos`);
  if (p.type === "row") continue;
  if (!p.targets?.length) fail(`dashboard: panel ${p.title} has no queries`);
  for (const t of p.targets ?? []) {
    queries++;
    // What Grafana substitutes before sending the query: the rate window
    // (at least four scrape intervals) and the "All" value of $instance.
    const expr = t.expr.replaceAll("$__rate_interval", "1m").replaceAll("$instance", ".*");
    if (/\$/.test(expr)) fail(`dashboard: ${p.title}/${t.refId}: unknown variable in ${t.expr}`);
    try {
      const data = await api("query", { query: expr });
      const why = whyEmptyIsFine(metricsOf(expr));
      if (why === null) fail(`dashboard: ${p.title}/${t.refId} reads a metric the server does not export: ${t.expr}`);
      else if (data.result.length === 0 && why === undefined) fail(`dashboard: ${p.title}/${t.refId} returned no data: ${t.expr}`);
      else if (data.result.some((x) => x.value[1] === "NaN")) fail(`dashboard: ${p.title}/${t.refId} is NaN (no observations in the window): ${t.expr}`);
      else console.log(`ok   ${p.title}/${t.refId}: ${data.result.length} series${why ? ` (empty is fine: ${why})` : ""}`);
    } catch (e) {
      fail(`dashboard: ${p.title}/${t.refId}: ${e.message}`);
    }
  }
}
console.log(`dashboard: ${panels.length} panels, ${queries} queries`);

console.log(failures.length === 0 ? "prometheus-check: all passed" : `prometheus-check: ${failures.length} failed`);
process.exit(failures.length === 0 ? 0 : 1);
