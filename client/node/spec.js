'use strict';
/**
 * The model spec: tensors in a fixed order that defines the flat coordinate
 * space (updates, float32) and the native byte layout (pulled weights, each
 * tensor in its own dtype). Mirrors fedgrpc/domain/model_spec.py.
 */

const crypto = require('node:crypto');

const DTYPE_BYTES = { DTYPE_FLOAT32: 4, DTYPE_FLOAT16: 2, DTYPE_BFLOAT16: 2, DTYPE_FLOAT64: 8 };
/** DType -> the name the spec digest hashes (torch's dtype names). */
const DTYPE_DIGEST_NAMES = {
  DTYPE_FLOAT32: 'float32',
  DTYPE_FLOAT16: 'float16',
  DTYPE_BFLOAT16: 'bfloat16',
  DTYPE_FLOAT64: 'float64',
};

/**
 * ModelSpec.digest: SHA-256 of the canonical encoding fedgrpc/domain/model_spec.py
 * hashes: a domain tag, then every count, length and dimension as uint64 LE,
 * each string length-prefixed, dtypes by their torch names.
 */
function specDigest(tensors) {
  const u64 = (n) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    return b;
  };
  const prefixed = (s) => {
    const bytes = Buffer.from(s, 'utf8');
    return Buffer.concat([u64(bytes.length), bytes]);
  };
  const hash = crypto.createHash('sha256').update('fedgrpc.v1.ModelSpec').update(u64(tensors.length));
  for (const t of tensors) {
    hash.update(prefixed(t.name)).update(prefixed(DTYPE_DIGEST_NAMES[t.dtype]));
    hash.update(Buffer.concat([u64(t.shape.length), ...t.shape.map(u64)]));
  }
  return hash.digest();
}

/**
 * A ModelSpec message from `[{name, shape, dtype?}]` (dtype: 'float32',
 * 'float16', 'bfloat16', 'float64' or a DTYPE_* name; default float32).
 * Order matters: it defines the flat coordinate space.
 */
function modelSpec(tensors) {
  const normalized = tensors.map(({ name, shape, dtype = 'float32' }) => {
    const wire = dtype.startsWith('DTYPE_') ? dtype : `DTYPE_${dtype.toUpperCase()}`;
    if (!(wire in DTYPE_BYTES)) throw new Error(`tensor ${name}: unsupported dtype ${dtype}`);
    return { name, shape: shape.map(Number), dtype: wire };
  });
  return { tensors: normalized, digest: specDigest(normalized) };
}

function numel(tensor) {
  return tensor.shape.reduce((a, b) => a * b, 1);
}

function numCoordinates(spec) {
  return spec.tensors.reduce((sum, t) => sum + numel(t), 0);
}

function numBytes(spec) {
  return spec.tensors.reduce((sum, t) => sum + numel(t) * DTYPE_BYTES[t.dtype], 0);
}

const scratch = Buffer.alloc(4);
const READERS = {
  DTYPE_FLOAT32: (b, o) => b.readFloatLE(o),
  DTYPE_FLOAT64: (b, o) => b.readDoubleLE(o),
  DTYPE_BFLOAT16: (b, o) => {
    scratch.writeUInt32LE(b.readUInt16LE(o) << 16 >>> 0);
    return scratch.readFloatLE(0);
  },
  DTYPE_FLOAT16: (b, o) => {
    const h = b.readUInt16LE(o);
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
  },
};

/** Pulled native bytes -> Float32Array of the flat coordinates (spec order). */
function decodeWeights(spec, data) {
  const out = new Float32Array(numCoordinates(spec));
  let coord = 0;
  let byte = 0;
  for (const tensor of spec.tensors) {
    const read = READERS[tensor.dtype];
    const size = DTYPE_BYTES[tensor.dtype];
    for (let i = 0, n = numel(tensor); i < n; i += 1, byte += size) out[coord++] = read(data, byte);
  }
  return out;
}

module.exports = { DTYPE_BYTES, specDigest, modelSpec, numel, numCoordinates, numBytes, decodeWeights };
