// shrinkformer's runtime in JavaScript: reads a packed model (.sfz) and translates with the
// WebAssembly build of the native library (web/build.py): its decoding step, beam search
// (csrc/search.c) and SentencePiece tokenizer (csrc/tokenizer.c). This file only reads the file
// and lays the model out in the module's memory, as runtime/model.py and runtime/layers.py do for
// the native library; it runs in a page and under Node alike.
//
//   const rt = await Runtime.create(wasmBytes);
//   const model = await rt.load(sfzBytes);   // checks format, version and SHA-256
//   model.translate("A man rides a bike.");  // -> "Ein Mann fährt Fahrrad."

const FORMAT = "shrinkformer-packed", VERSION = "1";
const PAD = 0, BOS = 2, EOS = 3; // special_tokens.py
const LAYER = { LUT4: 0, BIN1: 1, SPARSE: 2, SPARSE_LUT4: 3, DENSE: 4 }; // runtime.h
const PRUNED_DENSE_BELOW = 0.9; // runtime/layers.py's
const PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
  "cross_attn.q_proj", "cross_attn.out_proj", "ffn.fc1", "ffn.fc2"];
const NORMS = ["self_attn_norm", "cross_attn_norm", "ffn_norm"];

/** What is wrong with a file, in one line. */
export class ModelError extends Error {}

// ---- the C structs (runtime.h), with wasm32's sizes; checked against the module's own layout
const I64 = ["i64", 8], PTR = ["ptr", 4], F32 = ["f32", 4], F64 = ["f64", 8];
const STRUCTS = {
  packed_layer: [["kind", I64], ["wide", I64], ["rows", I64], ["cols", I64], ["bits", I64], ["index", PTR],
    ["values", PTR], ["codebook", PTR], ["mask", PTR], ["row_start", PTR]],
  decoder_layer: [["proj", PTR, 8], ["bias", PTR, 8], ["norm_weight", PTR, 3], ["norm_bias", PTR, 3], ["self_k", PTR],
    ["self_v", PTR], ["cross_k", PTR], ["cross_v", PTR]],
  decoder_desc: [["layers", I64], ["C", I64], ["heads", I64], ["ffn", I64], ["vocab", I64], ["capacity", I64],
    ["S", I64], ["pre_norm", I64], ["eps", F32], ["layer", PTR], ["final_weight", PTR], ["final_bias", PTR],
    ["out", PTR], ["embed", PTR], ["positions", PTR], ["embed_scale", F32], ["key_padding", PTR],
    ["ancestry", PTR]],
  search_desc: [["encoder", PTR], ["decoder", PTR], ["cross", PTR], ["cross_bias", PTR], ["max_positions", I64],
    ["beam", I64], ["max_len_b", I64], ["pad", I64], ["bos", I64], ["eos", I64], ["max_len_a", F32],
    ["length_penalty", F64]],
};

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
const DTYPES = { F32: [Float32Array, 4], F16: [null, 2], U8: [Uint8Array, 1], I8: [Int8Array, 1], I16: [Int16Array, 2],
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

function halfToFloat(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i], s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    out[i] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return out;
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

function typed(t) { // a tensor's values as a fresh typed array (aligned, float16 widened)
  const copy = t.bytes.slice();
  if (t.dtype === "F16") return halfToFloat(new Uint16Array(copy.buffer));
  const [type] = DTYPES[t.dtype];
  return new type(copy.buffer);
}

function floats(t) {
  const v = typed(t);
  return v instanceof Float32Array ? v : Float32Array.from(v, Number);
}

// ---- a layer's parts as the kernels read them (runtime/layers.py)
function huffmanDecode(packed, lengths, n) { // pack/entropy.py's canonical codes
  const out = new Uint8Array(n), maxLen = Math.max(0, ...lengths);
  const symbols = [...lengths.keys()].filter((s) => lengths[s] > 0).sort((a, b) => lengths[a] - lengths[b] || a - b);
  const count = new Array(maxLen + 2).fill(0);
  for (const s of symbols) count[lengths[s]]++;
  let pos = 0;
  for (let k = 0; k < n; k++) {
    let code = 0, first = 0, index = 0, len = 1;
    for (;; len++) {
      if (len > maxLen || pos >= packed.length * 8) throw new ModelError("corrupt Huffman stream");
      code |= (packed[pos >> 3] >> (7 - (pos & 7))) & 1;
      pos++;
      if (code - first < count[len]) { out[k] = symbols[index + code - first]; break; }
      index += count[len];
      first = (first + count[len]) << 1;
      code <<= 1;
    }
  }
  return out;
}

function packBits(values, bits) { // most significant bit first
  const out = new Uint8Array(Math.ceil((values.length * bits) / 8));
  let pos = 0;
  for (const v of values) for (let b = bits - 1; b >= 0; b--, pos++) if ((v >> b) & 1) out[pos >> 3] |= 0x80 >> (pos & 7);
  return out;
}

function unpackBits(packed, bits, start, count) {
  const out = new Uint8Array(count);
  for (let i = 0, pos = start * bits; i < count; i++) {
    let v = 0;
    for (let b = 0; b < bits; b++, pos++) v = (v << 1) | ((packed[pos >> 3] >> (7 - (pos & 7))) & 1);
    out[i] = v;
  }
  return out;
}

function unpackMask(kind, data, n) {
  const mask = new Uint8Array(n);
  if (kind === "bitmask") {
    for (let i = 0; i < n; i++) mask[i] = (data[i >> 3] >> (7 - (i & 7))) & 1;
  } else if (kind === "positions") {
    for (let i = 0, pos = -1; i < data.length; i++) {
      pos += data[i] === 0 ? 255 : data[i];
      if (data[i] !== 0) mask[pos] = 1;
    }
  } else throw new ModelError(`unknown mask encoding '${kind}'`);
  return mask;
}

const KINDS = { "codebook 4 0": LAYER.LUT4, "codebook 1 0": LAYER.BIN1, "sparse 32 1": LAYER.SPARSE,
  "codebook 1 1": LAYER.SPARSE_LUT4, "codebook 2 1": LAYER.SPARSE_LUT4, "codebook 3 1": LAYER.SPARSE_LUT4,
  "codebook 4 1": LAYER.SPARSE_LUT4 };

function codebookLayer(rows, cols, bits, centroids, index, mask) {
  const codebook = new Float32Array(Math.max(2 ** bits, mask ? 16 : 0));
  codebook.set(centroids);
  let idx = index;
  if (mask) { idx = new Uint8Array(index.length + 16); idx.set(index); } // the pruned kernels read 16 at a time
  return withMask({ rows, cols, encoding: "codebook", bits, index: idx, codebook }, mask);
}

function withMask(layer, mask) {
  if (!mask) return layer;
  layer.mask = packBits(mask, 1);
  layer.rowStart = new Int32Array(layer.rows + 1);
  for (let r = 0; r < layer.rows; r++) {
    let s = 0;
    for (let c = 0; c < layer.cols; c++) s += mask[r * layer.cols + c];
    layer.rowStart[r + 1] = layer.rowStart[r] + s;
  }
  layer.keep = mask;
  return layer;
}

function kindOf(layer) {
  if (layer.cols % 8) return null;
  if (layer.encoding === "dense") return LAYER.DENSE;
  return KINDS[`${layer.encoding} ${layer.bits} ${layer.mask ? 1 : 0}`] ?? null;
}

function dequantize(layer) { // the dense fp32 weight
  const n = layer.rows * layer.cols, out = new Float32Array(n);
  if (!layer.mask) {
    const codes = unpackBits(layer.index, layer.bits, 0, n);
    for (let i = 0; i < n; i++) out[i] = layer.codebook[codes[i]];
    return out;
  }
  const survivors = layer.rowStart[layer.rows];
  const vals = layer.encoding === "sparse" ? layer.values : Float32Array.from(unpackBits(layer.index, layer.bits, 0, survivors), (c) => layer.codebook[c]);
  for (let i = 0, j = 0; i < n; i++) if (layer.keep[i]) out[i] = vals[j++];
  return out;
}

function layerFromParts(shape, parts, meta) { // LayerArrays.from_parts, then for_decoding
  const [rows, cols] = shape, n = rows * cols;
  let index = parts.index, maskData = parts.mask, maskKind = meta.mask;
  if (meta.index_coding === "huffman") index = packBits(huffmanDecode(parts.index_huffman, parts.index_lengths, meta.count), meta.bits);
  if (maskKind === "huffman-positions") { maskData = huffmanDecode(parts.mask, parts.mask_lengths, meta.mask_symbols); maskKind = "positions"; }
  const mask = maskKind ? unpackMask(maskKind, maskData, n) : null;
  let layer;
  if (meta.encoding === "codebook") {
    let bits = meta.bits;
    if (!mask && (bits === 2 || bits === 3)) { index = packBits(unpackBits(index, bits, 0, meta.count), 4); bits = 4; } // the 4-bit kernel runs them
    layer = codebookLayer(rows, cols, bits, parts.centroids, index, mask);
  } else {
    layer = withMask({ rows, cols, encoding: "sparse", bits: 32, values: parts.values }, mask);
  }
  if (kindOf(layer) === null) return dense(rows, cols, dequantize(layer));
  if (layer.mask && layer.encoding === "codebook" && layer.bits <= 3 && layer.rowStart[rows] >= (1 - PRUNED_DENSE_BELOW) * n) {
    // as a dense 4-bit layer whose unused entry is the pruned weights' zero (layers.py's for_decoding)
    const zero = 2 ** layer.bits, codes = new Uint8Array(n).fill(zero);
    const kept = unpackBits(layer.index, layer.bits, 0, layer.rowStart[rows]);
    for (let i = 0, j = 0; i < n; i++) if (layer.keep[i]) codes[i] = kept[j++];
    const centroids = new Float32Array(zero + 1);
    centroids.set(layer.codebook.subarray(0, zero));
    return codebookLayer(rows, cols, 4, centroids, packBits(codes, 4), null);
  }
  return layer;
}

function dense(rows, cols, values) { return { rows, cols, encoding: "dense", bits: 32, values }; }

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
    want.push(8, 3, 5); // PROJECTIONS, NORMS, LAYER_KINDS
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
    const tensor = (key) => (tensors[key] ? rt.put(floats(tensors[key])) : 0);
    const layer = (name) => { // a packed_layer's address
      let arrays;
      if (name in layers) {
        const meta = layers[name], parts = {};
        for (const f of ["centroids", "values"]) if (tensors[`${name}.${f}`]) parts[f] = floats(tensors[`${name}.${f}`]);
        for (const f of ["index", "mask", "index_huffman", "index_lengths", "mask_lengths"])
          if (tensors[`${name}.${f}`]) parts[f] = typed(tensors[`${name}.${f}`]);
        arrays = layerFromParts(meta.shape, parts, meta);
      } else {
        const w = tensors[`${name}.weight`];
        if (!w) throw new Error(`no weight for ${name}`);
        arrays = dense(w.shape[0], w.shape[1], floats(w));
      }
      const put = (a) => (a ? rt.put(a) : 0);
      return rt.struct("packed_layer", { kind: kindOf(arrays), wide: 0, rows: arrays.rows, cols: arrays.cols,
        bits: arrays.bits, index: put(arrays.index), values: put(arrays.values), codebook: put(arrays.codebook),
        mask: put(arrays.mask), row_start: put(arrays.rowStart) });
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
    const proto = typed(tensors.__tokenizer__);
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
