// The page: loads the model beside it (model.sfz) or one dropped in, translates each line typed,
// and shows what it costs. Timings are also left in window.shrinkformer for scripts that drive
// the page (benchmarks/browser.py).
import { ModelError, Runtime } from "./shrinkformer.mjs";

const $ = (id) => document.getElementById(id);
const state = { runtime: null, model: null, name: "", bytes: 0, loadSeconds: 0, lastRun: null };
window.shrinkformer = state;

function fail(err) { // bad files get one line in the page
  $("error").textContent = err instanceof ModelError ? err.message : `error: ${err.message || err}`;
  $("error").dataset.state = "error";
}

async function runtime() {
  if (!state.runtime) state.runtime = await Runtime.create(await (await fetch("shrinkformer.wasm")).arrayBuffer());
  return state.runtime;
}

async function load(bytes, name) {
  $("error").textContent = "";
  $("translate").disabled = true;
  const t0 = performance.now();
  try {
    const model = await (await runtime()).load(new Uint8Array(bytes), name);
    Object.assign(state, { model, name, bytes: bytes.byteLength, loadSeconds: (performance.now() - t0) / 1000 });
    const spec = model.spec;
    $("model").textContent = `${name}: ${(bytes.byteLength / 1e6).toFixed(2)} MB, loaded in ${state.loadSeconds.toFixed(2)} s ` +
      `(${spec.encoder_layers}+${spec.decoder_layers} layers, d_model ${spec.d_model}, beam ${model.beam})`;
    $("model").dataset.state = "ready";
    $("translate").disabled = false;
  } catch (err) {
    $("model").textContent = state.model ? `${state.name} (kept)` : "no model loaded";
    fail(err);
  }
}

function translate() {
  if (!state.model) return;
  $("error").textContent = "";
  delete $("target").dataset.state;
  const lines = $("source").value.split("\n");
  const t0 = performance.now();
  let out;
  try {
    out = lines.map((line) => state.model.translate(line));
  } catch (err) {
    fail(err);
    return;
  }
  const seconds = (performance.now() - t0) / 1000;
  const words = out.join(" ").split(/\s+/).filter(Boolean).length, sentences = lines.filter((l) => l.trim()).length;
  state.lastRun = { lines: out, seconds, words, sentences };
  $("target").textContent = out.join("\n");
  $("target").dataset.state = "done";
  $("stats").textContent = `${sentences} sentence${sentences === 1 ? "" : "s"}, ${words} words in ${seconds.toFixed(2)} s: ` +
    `${(words / seconds).toFixed(1)} words/s, ${((1000 * seconds) / Math.max(sentences, 1)).toFixed(1)} ms/sentence`;
}

$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate(); });
const fromFile = async (file) => load(await file.arrayBuffer(), file.name);
$("file").addEventListener("change", (e) => e.target.files[0] && fromFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) fromFile(e.dataTransfer.files[0]); });

fetch("model.sfz").then(async (r) => {
  if (!r.ok) throw new Error(`no model.sfz beside the page (HTTP ${r.status}): drop one in`);
  await load(await r.arrayBuffer(), new URL(r.url).pathname.split("/").pop());
}).catch(fail);
