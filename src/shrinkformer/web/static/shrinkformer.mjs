// shrinkformer's runtime in JavaScript: reads a packed model (.sfz) and translates with the
// WebAssembly build of the native library (web/build.py): its decoding step, beam search
// (csrc/search.c), SentencePiece tokenizer (csrc/tokenizer.c) and the layout of a file's layers
// (csrc/prepare.c, as the Python runtime's direct.py uses it). This file only reads the file and
// hands its parts to the module; it runs in a page and under Node alike.
//
//   const rt = await Runtime.create(wasmBytes);
//   const model = await rt.load(sfzBytes);   // checks format, version and SHA-256
//   model.translate("A man rides a bike.");  // -> "Ein Mann fährt Fahrrad."

const FORMAT = "shrinkformer-packed", VERSION = "1";
const PAD = 0, BOS = 2, EOS = 3; // special_tokens.py
const PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
  "cross_attn.q_proj", "cross_attn.out_proj", "ffn.fc1", "ffn.fc2"];
const NORMS = ["self_attn_norm", "cross_attn_norm", "ffn_norm"];

/** What is wrong with a file, in one line. */
export class ModelError extends Error {}

// ---- the C structs (runtime.h), with wasm32's sizes; checked against the module's own layout
const I64 = ["i64", 8], PTR = ["ptr", 4], F32 = ["f32", 4], F64 = ["f64", 8];
const STRUCTS = {
  packed_layer: [["kind", I64], ["wide", I64], ["rows", I64], ["cols", I64], ["bits", I64], ["index", PTR],
    ["values", PTR], ["codebook", PTR], ["mask", PTR], ["row_start", PTR], ["qcodebook", PTR], ["qsum", PTR],
    ["qscale", F32], ["row_scale", PTR], ["gindex", PTR], ["gbasis", PTR], ["gcols", I64]],
  decoder_layer: [["proj", PTR, 8], ["bias", PTR, 8], ["norm_weight", PTR, 3], ["norm_bias", PTR, 3], ["self_k", PTR],
    ["self_v", PTR], ["cross_k", PTR], ["cross_v", PTR]],
  decoder_desc: [["layers", I64], ["C", I64], ["heads", I64], ["ffn", I64], ["vocab", I64], ["capacity", I64],
    ["S", I64], ["pre_norm", I64], ["eps", F32], ["layer", PTR], ["final_weight", PTR], ["final_bias", PTR],
    ["out", PTR], ["embed", PTR], ["positions", PTR], ["embed_scale", F32], ["key_padding", PTR],
    ["ancestry", PTR], ["half_kv", I64]],
  search_desc: [["encoder", PTR], ["decoder", PTR], ["cross", PTR], ["cross_bias", PTR], ["max_positions", I64],
    ["beam", I64], ["max_len_b", I64], ["pad", I64], ["bos", I64], ["eos", I64], ["max_len_a", F32],
    ["length_penalty", F64], ["half_kv", I64]],
  layer_parts: [["rows", I64], ["cols", I64], ["encoding", I64], ["bits", I64], ["count", I64], ["index_huffman", I64],
    ["mask_kind", I64], ["mask_symbols", I64], ["centroids", PTR], ["n_centroids", I64], ["values", PTR],
    ["n_values", I64], ["index", PTR], ["index_lengths", PTR], ["mask", PTR], ["mask_lengths", PTR],
    ["index_bytes", I64], ["n_index_lengths", I64], ["mask_bytes", I64], ["n_mask_lengths", I64], ["row_scale", PTR],
    ["n_row_scale", I64]],
};
const ENCODINGS = { codebook: 0, sparse: 1, dense: 2 }; // runtime.h's ENCODING_*
const MASKS = { bitmask: 1, positions: 2, "huffman-positions": 3 }; // MASK_*, none: 0

function layout() { // {struct: {size, fields: {name: [offset, type, count]}}}, as a C compiler lays them out
  const out = {};
  for (const [name, fields] of Object.entries(STRUCTS)) {
    let offset = 0, align = 1;
    const at = {};
    for (const [field, [type, size], count = 1] of fields) {
      offset = Math.ceil(offset / size) * size;
      at[field] = [offset, type, count];
      offset += size * count;
      align = Math.max(align, size);
    }
    out[name] = { size: Math.ceil(offset / align) * align, fields: at };
  }
  return out;
}

// ---- reading a .sfz: the safetensors layout and pack/format.py's checksum
const DTYPES = { F32: [Float32Array, 4], F16: [Uint16Array, 2], U8: [Uint8Array, 1], I8: [Int8Array, 1], I16: [Int16Array, 2],
  I32: [Int32Array, 4], I64: [BigInt64Array, 8], F64: [Float64Array, 8], BOOL: [Uint8Array, 1] };

function pyString(s) { // Python's json.dumps of a string (ensure_ascii)
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

async function sha256(chunks) {
  const total = chunks.reduce((n, c) => n + c.byteLength, 0), all = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) { all.set(c, at); at += c.byteLength; }
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) throw new ModelError("this page has no WebCrypto to check the file with: open it through http://localhost, not as a file");
  return [...new Uint8Array(await subtle.digest("SHA-256", all))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The checked file: {meta, tensors: {name: {dtype, shape, bytes}}}. */
export async function readSfz(bytes, name = "the file") {
  // a plain Uint8Array (Node's Buffer slices without copying)
  const data = ArrayBuffer.isView(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : new Uint8Array(bytes);
  if (data.length < 8) throw new ModelError(`${name}: truncated packed file`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n > data.length - 8) throw new ModelError(`${name}: truncated or corrupt packed file (header of ${n} bytes in a ${data.length}-byte file)`);
  let head;
  try {
    head = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(data.subarray(8, 8 + n)));
    if (typeof head !== "object" || head === null || Array.isArray(head)) throw new Error();
  } catch { throw new ModelError(`${name}: corrupt packed file (unreadable header)`); }
  const meta = head.__metadata__ || {};
  delete head.__metadata__;
  if (meta.format !== FORMAT) throw new ModelError(`${name}: not a shrinkformer packed file`);
  if (meta.version !== VERSION) throw new ModelError(`${name}: packed format version ${meta.version} is not supported (this page reads version ${VERSION})`);
  const body = data.subarray(8 + n), tensors = {};
  for (const [key, info] of Object.entries(head)) {
    const [type, size] = DTYPES[info.dtype] || [];
    const [begin, end] = info.data_offsets || [];
    const count = (info.shape || []).reduce((a, b) => a * b, 1);
    if (!size || !(begin >= 0 && begin <= end && end <= body.length) || end - begin !== size * count)
      throw new ModelError(`${name}: corrupt packed file (tensor '${key}' does not fit the file)`);
    tensors[key] = { dtype: info.dtype, shape: info.shape, bytes: body.subarray(begin, end) };
  }
  const rest = Object.fromEntries(Object.entries(meta).filter(([k]) => k !== "sha256"));
  const metaJson = "{" + Object.keys(rest).sort().map((k) => `${pyString(k)}: ${pyString(rest[k])}`).join(", ") + "}";
  const enc = new TextEncoder(), chunks = [enc.encode(metaJson)];
  for (const key of Object.keys(tensors).sort()) chunks.push(enc.encode(key), tensors[key].bytes);
  if (await sha256(chunks) !== meta.sha256) throw new ModelError(`${name}: checksum mismatch: the file is corrupt`);
  return { meta, tensors };
}

function typed(t) { // a tensor's values as a fresh typed array (aligned)
  const copy = t.bytes.slice();
  const [type] = DTYPES[t.dtype];
  return type ? new type(copy.buffer) : new Uint16Array(copy.buffer);
}

// ---- the module
export class Runtime {
  static async create(wasmBytes) {
    let memory;
    const { instance } = await WebAssembly.instantiate(wasmBytes, {
      env: { emscripten_notify_memory_growth: () => {} },
      wasi_snapshot_preview1: { proc_exit: (code) => { throw new Error(`exit ${code}`); } },
    });
    const x = instance.exports;
    if (x._initialize) x._initialize();
    memory = x.memory;
    return new Runtime(x, memory);
  }

  constructor(exports, memory) {
    this.x = exports;
    this.memory = memory;
    this.layout = layout();
    this.checkLayout();
  }

  get u8() { return new Uint8Array(this.memory.buffer); }
  get view() { return new DataView(this.memory.buffer); }

  checkLayout() { // the module's struct layout against this file's (contract.check_layout's twin)
    const want = [];
    for (const name of Object.keys(STRUCTS)) {
      want.push(this.layout[name].size, ...STRUCTS[name].map(([f]) => this.layout[name].fields[f][0]));
    }
    want.push(8, 3, 6); // PROJECTIONS, NORMS, LAYER_KINDS
    const buf = this.alloc(8 * 256);
    const n = Number(this.x.shrinkformer_layout(buf, 256n));
    const got = [];
    for (let i = 0; i < n; i++) got.push(Number(this.view.getBigInt64(buf + 8 * i, true)));
    this.x.free(buf);
    const first = got.findIndex((v, i) => v !== want[i]);
    if (first >= 0 || got.length !== want.length)
      throw new ModelError(`the WebAssembly module's struct layout differs from shrinkformer.mjs at value ${first}: rebuild the page (shrinkformer web-demo)`);
  }

  alloc(bytes) {
    const p = this.x.malloc(Math.max(8, bytes));
    if (!p) throw new ModelError("out of memory");
    return p;
  }

  put(array) { // a typed array's bytes in the module's memory; its address
    const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    const p = this.alloc(bytes.length);
    this.u8.set(bytes, p);
    return p;
  }

  struct(name, values) { // a C struct in the module's memory from {field: value or [values]}
    const { size, fields } = this.layout[name];
    const p = this.alloc(size);
    this.u8.fill(0, p, p + size);
    const v = this.view;
    for (const [field, value] of Object.entries(values)) {
      const [offset, type, count] = fields[field];
      const list = count > 1 ? value : [value];
      list.forEach((item, i) => {
        const at = p + offset + i * (type === "ptr" ? 4 : 8);
        if (type === "i64") v.setBigInt64(at, BigInt(item), true);
        else if (type === "ptr") v.setUint32(at, item || 0, true);
        else if (type === "f32") v.setFloat32(at, item, true);
        else v.setFloat64(at, item, true);
      });
    }
    return p;
  }

  async load(bytes, name = "the file") {
    const file = await readSfz(bytes, name);
    return new Model(this, file, name);
  }
}

export class Model {
  constructor(rt, file, name) {
    this.rt = rt;
    const { meta, tensors } = file;
    if (!("config" in meta)) {
      const family = "huggingface" in meta ? (JSON.parse(meta.huggingface).architectures || ["a Hugging Face model"])[0] : "another model family";
      throw new ModelError(`${name}: ${family} runs only with the torch install (pip install 'shrinkformer[train]'); the page serves shrinkformer's own Transformer`);
    }
    let config, layers;
    try {
      config = JSON.parse(meta.config);
      layers = JSON.parse(meta.layers || "{}");
      for (const [alias, stored] of Object.entries(JSON.parse(meta.aliases || "{}"))) tensors[alias] = tensors[stored];
      if (!tensors.__tokenizer__) throw new Error("no tokenizer");
      this.build(config, layers, tensors);
    } catch (err) {
      if (err instanceof ModelError) throw err;
      if (globalThis.process?.env?.SHRINKFORMER_DEBUG) console.error(err);
      throw new ModelError(`${name}: inconsistent packed file (${err.message.slice(0, 120)})`);
    }
    this.config = config;
    this.meta = meta;
  }

  build(config, layers, tensors) {
    const rt = this.rt, spec = config.model, decode = config.decode || {};
    const C = spec.d_model, descs = new Map();
    this.spec = spec;
    const floats = (t) => { // a tensor as fp32 in the module's memory (float16 widened by the C)
      if (t.dtype === "F32") return rt.put(typed(t));
      if (t.dtype !== "F16") throw new Error(`a ${t.dtype} tensor where floats belong`);
      const count = t.bytes.length / 2, half = rt.put(typed(t)), out = rt.alloc(4 * count);
      rt.x.half_to_float(half, BigInt(count), out);
      rt.x.free(half);
      return out;
    };
    const tensor = (key) => (tensors[key] ? floats(tensors[key]) : 0);
    const count = (t) => (t.shape || []).reduce((a, b) => a * b, 1);
    const layer = (name) => { // a packed_layer laid out by the module (csrc/prepare.c, as runtime/layers.py)
      const meta = layers[name], temporary = [];
      const part = (key, asFloats) => {
        const t = tensors[key];
        if (!t) return [0, 0];
        const p = asFloats ? floats(t) : rt.put(typed(t));
        temporary.push(p);
        return [p, count(t)];
      };
      let parts;
      if (!meta) {
        const w = tensors[`${name}.weight`];
        if (!w) throw new Error(`no weight for ${name}`);
        const [values, n] = part(`${name}.weight`, true);
        parts = { rows: w.shape[0], cols: w.shape[1], encoding: ENCODINGS.dense, values, n_values: n };
      } else {
        const huffman = meta.index_coding === "huffman";
        const [centroids, nCentroids] = part(`${name}.centroids`, true), [values, nValues] = part(`${name}.values`, true);
        const [index, indexBytes] = part(`${name}.${huffman ? "index_huffman" : "index"}`);
        const [indexLengths, nIndexLengths] = part(`${name}.index_lengths`);
        const [mask, maskBytes] = part(`${name}.mask`), [maskLengths, nMaskLengths] = part(`${name}.mask_lengths`);
        const [rowScale, nRowScale] = part(`${name}.row_scale`, true);
        parts = { rows: meta.shape[0], cols: meta.shape[1], encoding: ENCODINGS[meta.encoding], bits: meta.bits ?? 32,
          count: meta.count ?? 0, index_huffman: huffman ? 1 : 0, mask_kind: MASKS[meta.mask] ?? 0,
          mask_symbols: meta.mask_symbols ?? 0, centroids, n_centroids: nCentroids, values, n_values: nValues, index,
          index_bytes: indexBytes, index_lengths: indexLengths, n_index_lengths: nIndexLengths, mask, mask_bytes: maskBytes,
          mask_lengths: maskLengths, n_mask_lengths: nMaskLengths, row_scale: rowScale, n_row_scale: nRowScale };
      }
      const p = rt.struct("layer_parts", parts), out = rt.alloc(rt.layout.packed_layer.size);
      const status = Number(rt.x.layer_prepare(p, out));
      for (const t of [p, ...temporary]) rt.x.free(t);
      if (status === -2) throw new ModelError("out of memory");
      if (status !== 0) throw new Error(`layer ${name}`);
      return out;
    };
    const norm = (prefix) => [tensor(`${prefix}.weight`), tensor(`${prefix}.bias`)];
    const block = (prefix, decoder) => {
      const proj = PROJECTIONS.map((p) => (decoder || !p.startsWith("cross") ? layer(`${prefix}.${p}`) : 0));
      const bias = PROJECTIONS.map((p) => (decoder || !p.startsWith("cross") ? tensor(`${prefix}.${p}.bias`) : 0));
      const norms = NORMS.map((n) => (decoder || n !== "cross_attn_norm" ? norm(`${prefix}.${n}`) : [0, 0]));
      if (norms.some(([w, b], i) => (decoder || i !== 1) && (!w || !b))) throw new Error(`missing norm in ${prefix}`);
      return { proj, bias, norm_weight: norms.map((n) => n[0]), norm_bias: norms.map((n) => n[1]) };
    };
    const structs = (blocks) => {
      const size = rt.layout.decoder_layer.size, p = rt.alloc(size * blocks.length);
      blocks.forEach((b, i) => { // each in place: write one, copy it into the array
        const one = rt.struct("decoder_layer", b);
        rt.u8.copyWithin(p + i * size, one, one + size);
        rt.x.free(one);
      });
      return p;
    };
    const encoder = Array.from({ length: spec.encoder_layers }, (_, i) => block(`encoder.layers.${i}`, false));
    const decoder = Array.from({ length: spec.decoder_layers }, (_, i) => block(`decoder.layers.${i}`, true));
    const cross = [], crossBias = [];
    for (let i = 0; i < spec.decoder_layers; i++) for (const kv of ["k_proj", "v_proj"]) {
      cross.push(layer(`decoder.layers.${i}.cross_attn.${kv}`));
      crossBias.push(tensor(`decoder.layers.${i}.cross_attn.${kv}.bias`));
    }
    const embed = layer("embed_tokens"), out = spec.tie_embeddings ? embed : layer("output_proj");
    const positions = rt.alloc(4 * spec.max_positions * C);
    rt.x.sinusoid_table(positions, BigInt(spec.max_positions), BigInt(C));
    const finals = ["encoder", "decoder"].map((s) => (spec.pre_norm ? norm(`${s}.final_norm`) : [0, 0]));
    const common = { C, heads: spec.n_heads, ffn: spec.d_ff, vocab: spec.vocab_size, pre_norm: spec.pre_norm ? 1 : 0,
      eps: spec.eps ?? 1e-5, embed, positions, embed_scale: Math.sqrt(C) };
    const enc = rt.struct("decoder_desc", { ...common, layers: spec.encoder_layers, layer: structs(encoder),
      final_weight: finals[0][0], final_bias: finals[0][1] });
    const dec = rt.struct("decoder_desc", { ...common, layers: spec.decoder_layers, layer: structs(decoder),
      final_weight: finals[1][0], final_bias: finals[1][1], out });
    const ptrs = (list) => rt.put(Uint32Array.from(list));
    this.beam = decode.beam_size ?? 5;
    this.search = rt.struct("search_desc", { encoder: enc, decoder: dec, cross: ptrs(cross), cross_bias: ptrs(crossBias),
      max_positions: spec.max_positions, beam: this.beam, max_len_b: decode.max_len_b ?? 10, pad: PAD, bos: BOS,
      eos: EOS, max_len_a: decode.max_len_a ?? 1.2, length_penalty: decode.length_penalty ?? 1.0 });
    this.maxSource = Math.max(1, Math.floor(spec.max_positions / 2) - 1);
    const proto = tensors.__tokenizer__.bytes.slice();
    const protoPtr = rt.put(proto);
    this.tokenizer = rt.x.spm_load(protoPtr, BigInt(proto.length));
    const error = this.cString(rt.x.spm_error(this.tokenizer));
    if (error) throw new ModelError(`tokenizer: ${error}`);
  }

  cString(p) {
    const u8 = this.rt.u8;
    let end = p;
    while (u8[end]) end++;
    return new TextDecoder().decode(u8.subarray(p, end));
  }

  ids(p, n) {
    const v = this.rt.view, out = [];
    for (let i = 0; i < n; i++) out.push(Number(v.getBigInt64(p + 8 * i, true)));
    return out;
  }

  encode(text) {
    const rt = this.rt, bytes = new TextEncoder().encode(text);
    const tp = rt.put(bytes.length ? bytes : new Uint8Array(1));
    let cap = 2 * bytes.length + 8;
    for (;;) {
      const ip = rt.alloc(8 * cap);
      const n = Number(rt.x.spm_encode(this.tokenizer, tp, BigInt(bytes.length), ip, BigInt(cap)));
      if (n < 0) throw new ModelError("out of memory");
      if (n <= cap) { const ids = this.ids(ip, n); rt.x.free(ip); rt.x.free(tp); return ids; }
      rt.x.free(ip);
      cap = n;
    }
  }

  decode(ids) {
    const rt = this.rt, ip = rt.put(BigInt64Array.from(ids.length ? ids : [0], BigInt));
    let cap = 8 * ids.length + 16;
    for (;;) {
      const op = rt.alloc(cap);
      const n = Number(rt.x.spm_decode(this.tokenizer, ip, BigInt(ids.length), op, BigInt(cap)));
      if (n <= cap) {
        const text = new TextDecoder().decode(rt.u8.slice(op, op + n));
        rt.x.free(op); rt.x.free(ip);
        return text;
      }
      rt.x.free(op);
      cap = n;
    }
  }

  /** The best hypothesis's token ids for each source (lists of ids, EOS appended here). */
  translateIds(sources) {
    const rt = this.rt, n = sources.length, P = this.spec.max_positions;
    if (!n) return [];
    const rows = sources.map((s) => [...s.slice(0, this.maxSource), EOS]), S = Math.max(...rows.map((r) => r.length));
    const src = new BigInt64Array(n * S);
    rows.forEach((r, i) => r.forEach((t, j) => { src[i * S + j] = BigInt(t); }));
    const sp = rt.put(src), op = rt.alloc(8 * n * P), lp = rt.alloc(8 * n);
    const status = Number(rt.x.beam_search(this.search, sp, BigInt(n), BigInt(S), op, lp));
    const out = [];
    if (status === 0) for (let i = 0; i < n; i++) out.push(this.ids(op + 8 * i * P, Number(rt.view.getBigInt64(lp + 8 * i, true))));
    rt.x.free(sp); rt.x.free(op); rt.x.free(lp);
    if (status !== 0) throw new ModelError(`out of memory translating ${n} sentences`);
    return out;
  }

  /** One line's translation (an empty line stays empty, as the runtime's translate_lines). */
  translate(line) {
    if (!line.trim()) return "";
    return this.decode(this.translateIds([this.encode(line)])[0]);
  }
}
