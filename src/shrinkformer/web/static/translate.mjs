// Translating under Node with the page's runtime (shrinkformer.mjs and the WebAssembly module):
//   node translate.mjs MODEL.sfz [shrinkformer.wasm] < sources > translations
// one line in, one line out, batch 1, as the page translates; the timing goes to stderr as JSON
// ({"load_seconds", "seconds", "lines", "words"}).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ModelError, Runtime } from "./shrinkformer.mjs";

const [modelPath, wasmPath = join(dirname(fileURLToPath(import.meta.url)), "shrinkformer.wasm")] = process.argv.slice(2);
if (!modelPath) {
  console.error("usage: node translate.mjs MODEL.sfz [shrinkformer.wasm] < sources");
  process.exit(2);
}
try {
  const t0 = performance.now();
  const rt = await Runtime.create(readFileSync(wasmPath));
  const model = await rt.load(readFileSync(modelPath), modelPath);
  const loaded = performance.now();
  const lines = readFileSync(0, "utf-8").split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  const out = [];
  let words = 0;
  for (const line of lines) {
    const text = model.translate(line);
    words += text.split(/\s+/).filter(Boolean).length;
    out.push(text);
  }
  const done = performance.now();
  process.stdout.write(out.map((l) => l + "\n").join(""));
  console.error(JSON.stringify({ load_seconds: (loaded - t0) / 1000, seconds: (done - loaded) / 1000, lines: lines.length, words }));
} catch (err) {
  if (!(err instanceof ModelError)) throw err;
  console.error(`error: ${err.message}`);
  process.exit(1);
}
