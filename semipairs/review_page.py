"""The review page: one HTML document with its CSS and JS inline (no build step, nothing fetched from the
network). ``__TOKEN__`` is replaced by the session's token when served."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>semipairs review</title>
<style>
 body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
 header{padding:10px 18px;background:#23303f;color:#fff;display:flex;gap:18px;align-items:baseline}
 header b{font-size:17px} main{display:flex;gap:18px;padding:16px 18px;align-items:flex-start}
 #judge{flex:3} #side{flex:2;min-width:340px}
 .card{background:#fff;border-radius:8px;padding:14px;box-shadow:0 1px 3px #0002;margin-bottom:14px}
 .pair{display:flex;gap:12px;justify-content:center}
 .pair img{width:min(34vw,360px);height:min(34vw,360px);object-fit:contain;image-rendering:pixelated;background:#ddd;border-radius:4px}
 .meta{text-align:center;color:#555;margin:8px 0}
 .keys{display:flex;gap:8px;justify-content:center;flex-wrap:wrap}
 button{font:inherit;padding:7px 12px;border-radius:6px;border:1px solid #999;background:#fff;cursor:pointer}
 button.same{border-color:#2a7;color:#175} button.diff{border-color:#c33;color:#a11}
 kbd{background:#eee;border:1px solid #bbb;border-radius:3px;padding:0 4px;font-size:12px}
 .big{font-size:26px;font-weight:600} table{border-collapse:collapse;width:100%} td,th{padding:3px 6px;text-align:right;border-bottom:1px solid #eee;white-space:nowrap}
 #grid{display:none;grid-template-columns:repeat(4,1fr);gap:10px} #grid .g{border:3px solid #fff;border-radius:6px;padding:3px;cursor:pointer;background:#fafafa}
 #grid .g.rej{border-color:#c33;background:#fee} #grid img{width:48%;image-rendering:pixelated;aspect-ratio:1;object-fit:contain}
 .msg{color:#a11} .ok{color:#175} input{font:inherit;padding:5px;width:7em}
</style></head><body>
<header><b>semipairs review</b><span id="ds"></span><span id="progress"></span></header>
<main>
 <section id="judge">
  <div class="card" id="single">
   <div class="pair"><img id="a" alt="anchor"><img id="p" alt="positive"></div>
   <div class="meta" id="pmeta"></div>
   <div class="keys">
    <button class="same" data-v="same">same kind <kbd>s</kbd></button>
    <button class="diff" data-v="different">different <kbd>d</kbd></button>
    <button data-v="unsure">can't tell <kbd>u</kbd></button>
    <button data-v="skip">skip <kbd>space</kbd></button>
    <button id="undo">undo <kbd>z</kbd></button>
    <button id="togrid">grid <kbd>g</kbd></button>
   </div>
  </div>
  <div class="card" id="gridcard" style="display:none">
   <p>Click the pairs that are <b>not</b> the same kind of thing, then submit: the others count as same. <kbd>g</kbd> goes back.</p>
   <div id="grid"></div>
   <p><button id="submitgrid">submit this page <kbd>enter</kbd></button></p>
  </div>
 </section>
 <aside id="side">
  <div class="card"><div>estimated precision</div><div class="big" id="prec">-</div><div id="ci"></div><div id="counts"></div></div>
  <div class="card"><table id="bands"><thead><tr><th>band</th><th>scores</th><th>pairs</th><th>judged</th><th>precision</th></tr></thead><tbody></tbody></table></div>
  <div class="card">target precision <input id="target" type="number" min="0.05" max="1" step="0.01" value="0.9">
   <div id="cut"></div></div>
  <div class="card"><div>publish a version without the rejected pairs</div>
   <p>version <input id="version" placeholder="1.1.0"> <button id="publish">publish</button></p>
   <label><input type="checkbox" id="usecut" style="width:auto"> also cut below the threshold for the target</label>
   <div id="pubmsg"></div></div>
 </aside>
</main>
<script>
const TOKEN = "__TOKEN__";
const H = {"Content-Type": "application/json", "X-Review-Token": TOKEN};
let state = null, gridPairs = [], rejected = new Set(), mode = "single", busy = false;
const $ = (id) => document.getElementById(id);
const pct = (x) => x == null ? "-" : (100 * x).toFixed(1) + "%";
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {headers: H} : {method: "POST", headers: H, body: JSON.stringify(body)});
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}
function img(pid, role) { return `/img/${pid}/${role}?token=${encodeURIComponent(TOKEN)}`; }
function target() { const t = parseFloat($("target").value); return t > 0 && t <= 1 ? t : null; }
async function refresh(s) { state = s || await api(`/api/state?target=${target() || ""}`); render(); }
function render() {
  const s = state, e = s.estimate, d = s.dataset;
  $("ds").textContent = `${d.name} ${d.version} · ${d.pairs} pairs · ${d.layout}`;
  $("progress").textContent = `you: ${s.mine} judged · all reviewers: ${e.judged} same/different, ${e.unsure} can't tell`;
  $("prec").textContent = pct(e.precision);
  $("ci").textContent = e.precision == null ? "judge a pair to start" : `95% interval ${pct(e.low)} – ${pct(e.high)}`;
  $("counts").textContent = `${e.same} same · ${e.different} different · ${e.skipped} skipped` +
    (e.disputed ? ` · ${e.disputed} disputed` : "") + (e.repeats ? ` · ${e.repeats} asked twice, ${pct(e.repeat_agreement)} agree` : "");
  $("bands").querySelector("tbody").innerHTML = e.bands.map(b =>
    `<tr><td>${b.band + 1}</td><td>${b.low_score == null ? "-" : b.low_score.toFixed(3) + "–" + b.high_score.toFixed(3)}</td>` +
    `<td>${b.size}</td><td>${b.judged}</td><td>${pct(b.precision)}${b.precision == null ? "" : ` (${pct(b.low)}–${pct(b.high)})`}</td></tr>`).join("");
  const c = s.cut;
  $("cut").innerHTML = !target() ? "" : c ? `score ≥ <b>${c.threshold.toFixed(4)}</b> keeps <b>${c.pairs}</b> pairs (anchors cover ${pct(c.coverage)} of the images), estimated ${pct(c.precision)} (${pct(c.low)}–${pct(c.high)})`
    : "no score band reaches it yet";
  $("undo").disabled = !s.can_undo;
  const n = s.next[0];
  if (!n) { $("pmeta").textContent = "every pair is judged"; $("a").removeAttribute("src"); $("p").removeAttribute("src"); return; }
  $("a").src = img(n.pair_id, "anchor"); $("p").src = img(n.pair_id, "positive");
  $("pmeta").textContent = `pair ${n.pair_id} · score ${n.score == null ? "-" : n.score.toFixed(4)} · band ${n.band + 1}`;
}
async function judge(v) {
  if (busy || !state || !state.next[0]) return;
  busy = true;
  try { const n = state.next[0]; await refresh(await api("/api/judge", {pair_id: n.pair_id, verdict: v, repeat: n.repeat})); }
  catch (err) { $("pmeta").textContent = err.message; } finally { busy = false; }
}
async function undo() { if (!busy) { busy = true; try { await refresh(await api("/api/undo", {})); } finally { busy = false; } } }
async function showGrid() {
  gridPairs = (await api("/api/grid?n=12")).pairs; rejected = new Set();
  $("grid").innerHTML = gridPairs.map(p => `<div class="g" data-id="${p.pair_id}"><img src="${img(p.pair_id, "anchor")}"> <img src="${img(p.pair_id, "positive")}"><div>${p.score == null ? "" : p.score.toFixed(3)}</div></div>`).join("");
  $("grid").style.display = "grid";
  for (const el of $("grid").children) el.onclick = () => { const id = +el.dataset.id; rejected.has(id) ? rejected.delete(id) : rejected.add(id); el.classList.toggle("rej"); };
}
async function submitGrid() {
  if (!gridPairs.length) return;
  await refresh(await api("/api/judge", {judgments: gridPairs.map(p => ({pair_id: p.pair_id, verdict: rejected.has(p.pair_id) ? "different" : "same"}))}));
  await showGrid();
}
function setMode(m) { mode = m; $("single").style.display = m === "single" ? "" : "none"; $("gridcard").style.display = m === "grid" ? "" : "none"; if (m === "grid") showGrid(); else refresh(); }
document.querySelectorAll("button[data-v]").forEach(b => b.onclick = () => judge(b.dataset.v));
$("undo").onclick = undo; $("togrid").onclick = () => setMode("grid"); $("submitgrid").onclick = submitGrid;
$("target").oninput = () => refresh();
$("publish").onclick = async () => {
  $("pubmsg").className = ""; $("pubmsg").textContent = "publishing…";
  try { const r = await api("/api/publish", {version: $("version").value.trim(), target: $("usecut").checked ? target() : null});
        $("pubmsg").className = "ok"; $("pubmsg").textContent = `published ${r.version}: ${r.path}`; }
  catch (err) { $("pubmsg").className = "msg"; $("pubmsg").textContent = err.message; }
};
document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT") return;
  const k = ev.key.toLowerCase();
  if (k === "g") { setMode(mode === "single" ? "grid" : "single"); return; }
  if (mode === "grid") { if (k === "enter") submitGrid(); return; }
  const v = {s: "same", d: "different", u: "unsure", " ": "skip"}[k];
  if (v) { ev.preventDefault(); judge(v); } else if (k === "z" || k === "backspace") { ev.preventDefault(); undo(); }
});
refresh();
</script></body></html>
"""
