'use strict';
/**
 * The data RPCs: PullModel (weights down, native bytes, signed by the
 * coordinator) and PushUpdate (a dense float32 update up, as header, chunks,
 * commit, each signed when the coordinator requires it). Mirrors
 * fedgrpc/client/download.py and transfer.py.
 */

const os = require('node:os');

const { rpcError, deadline } = require('./errors.js');
const { UpdateSigner, modelHash, verifyModelHeader } = require('./signing.js');
const { numBytes } = require('./spec.js');

const FP32_BYTES = 4;

/**
 * Checks a PullModel stream and copies its chunks into one Buffer, as
 * fedgrpc/client/download.py does: header first, the federation's spec
 * digest and size, chunks in byte order covering the model exactly.
 */
class ModelReceiver {
  constructor(spec, trust = null) {
    this.spec = spec;
    this.trust = trust; // {runId, coordinator}: check the signature and the digest
    this.hash = null; // the header's weights hash (SHA-256 or BLAKE3), incremental
    this.total = numBytes(spec);
    this.data = Buffer.alloc(this.total);
    this.header = null;
    this.received = 0;
    this.chunks = 0;
  }

  accept(message) {
    if (message.part === 'header') this._acceptHeader(message.header);
    else if (message.part === 'chunk') this._acceptChunk(message.chunk);
    else throw new Error('PullModel sent a message with no part');
  }

  _acceptHeader(header) {
    if (this.header !== null) throw new Error('PullModel sent a second ModelHeader');
    if (!header.model_spec_digest.equals(this.spec.digest)) {
      throw new Error('PullModel sent weights of a different model spec than this client joined with');
    }
    if (header.total_bytes !== this.total) {
      throw new Error(`PullModel announced ${header.total_bytes} model bytes, the spec needs ${this.total}`);
    }
    if (this.trust && !verifyModelHeader(header, this.trust.runId, this.trust.coordinator)) {
      throw new Error(`model version ${header.model_version} is not signed by the coordinator's key`);
    }
    this.hashInfo = modelHash(header);
    this.hash = this.hashInfo.create();
    this.header = header;
  }

  _acceptChunk({ offset, data }) {
    if (this.header === null) throw new Error('PullModel sent a chunk before its ModelHeader');
    if (offset !== this.received || offset + data.length > this.total) {
      throw new Error(`PullModel sent bytes [${offset}, ${offset + data.length}) after ${this.received}`);
    }
    data.copy(this.data, offset);
    this.hash.update(data);
    this.received += data.length;
    this.chunks += 1;
  }

  /** The pulled model, once the stream ended; throws if it is incomplete or too old. */
  finish(minVersion) {
    const { header, received, total } = this;
    if (header === null || received !== total) {
      throw new Error(`PullModel ended after ${received} of ${total} model bytes`);
    }
    if (header.model_version < minVersion) {
      throw new Error(`asked for model version >= ${minVersion}, got ${header.model_version}`);
    }
    const sha256 = Buffer.from(this.hash.digest());
    if (this.trust && !sha256.equals(header.weights_sha256)) {
      throw new Error(
        `the bytes of model version ${header.model_version} do not match their signed ${this.hashInfo.label} digest`,
      );
    }
    const { data, chunks } = this;
    const weightsHash = this.hashInfo.name;
    return { modelVersion: header.model_version, roundId: header.round_id, data, chunks, sha256, weightsHash };
  }
}

/**
 * Download the global weights once their version is at least `minVersion`
 * (the coordinator holds the call until then, within `timeoutMs`).
 *
 * Resolves to {modelVersion, roundId, data, chunks, sha256, weightsHash}: `data` is a
 * Buffer of every tensor's bytes in its own dtype, in spec order
 * (`decodeWeights` turns it into float32 coordinates); `sha256` (the name
 * predates BLAKE3) is its digest under the header's weights hash, the hash Join
 * negotiated ('sha256' or 'blake3': `weightsHash`), which an update based on
 * it signs as `base_model_sha256`. Rejects with
 * FedGrpcError (UNAUTHENTICATED, DEADLINE_EXCEEDED, UNAVAILABLE) or, for a
 * stream that does not describe this model completely and in order or is
 * not signed by the coordinator the client joined, with an Error.
 */
function pullModel(client, federation, { minVersion = 0, timeoutMs = 60000 } = {}) {
  const trust = { runId: federation.runId, coordinator: federation.coordinator };
  const receiver = new ModelReceiver(federation.modelSpec, trust);
  const request = {
    client_id: federation.clientId,
    session_token: federation.sessionToken,
    min_version: minVersion,
  };
  return new Promise((resolve, reject) => {
    let settled = false;
    const call = client.PullModel(request, { deadline: deadline(timeoutMs) });
    const settle = (step) => {
      if (settled) return;
      try {
        const result = step();
        if (result === undefined) return;
        settled = true;
        resolve(result);
      } catch (error) {
        settled = true;
        call.cancel(); // a no-op once finished; stops a stream we rejected
        reject(error);
      }
    };
    const fail = (error) => settle(() => {
      throw error;
    });
    call.on('data', (message) => settle(() => receiver.accept(message)));
    call.on('error', (err) => fail(rpcError('PullModel', err)));
    call.on('end', () => settle(() => receiver.finish(minVersion)));
  });
}

/** `values` as little-endian float32 bytes, sharing memory on LE hosts. */
function float32LE(values) {
  if (os.endianness() === 'LE') return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  const out = Buffer.alloc(values.length * FP32_BYTES);
  values.forEach((v, i) => out.writeFloatLE(v, i * FP32_BYTES));
  return out;
}

/**
 * Header, chunks of `coordsPerChunk` coordinates in order, commit; signed
 * (fedgrpc/crypto/signing.py's chain) when the coordinator requires it.
 */
function* updateMessages(federation, header, values) {
  const signer = federation.signed ? new UpdateSigner(federation.identity, federation.runId, header) : null;
  yield { header: signer ? { ...header, signature: signer.headerSignature } : header };
  const bytes = float32LE(values);
  const step = federation.coordsPerChunk;
  let seq = 0;
  for (let offset = 0; offset < values.length; offset += step, seq += 1) {
    const count = Math.min(step, values.length - offset);
    const payload = bytes.subarray(offset * FP32_BYTES, (offset + count) * FP32_BYTES);
    const proof = signer ? signer.signChunk(seq, offset, count, payload) : {};
    yield { chunk: { seq, offset, count, payload, ...proof } };
  }
  yield { commit: signer ? signer.commit() : { num_chunks: seq } };
}

/** Write `messages` with backpressure; stop early once the call has ended. */
async function writeAll(call, messages, hasEnded) {
  for (const message of messages) {
    if (hasEnded()) return;
    if (!call.write(message)) {
      await new Promise((resolve) => {
        const done = () => {
          call.off('drain', done);
          call.off('status', done);
          resolve();
        };
        call.on('drain', done);
        call.on('status', done);
      });
    }
  }
  if (!hasEnded()) call.end();
}

/**
 * Push one dense float32 update (CODEC_DENSE_FP32): `values` is a
 * Float32Array of every coordinate in flat spec order. A pseudo-gradient is
 * global weights at `baseVersion` minus local weights (the coordinator
 * subtracts the mean of them). `roundNonce` is the round's
 * (RoundStarted.round_nonce) and `baseSha256` the SHA-256 of the base
 * weights (pullModel's `sha256`); the signatures cover both. Payloads and
 * the chain are hashed with the hash Join negotiated (`federation.updateHash`). Resolves to
 * the PushUpdateResponse plus {chunks, payloadBytes}.
 *
 * Rejects with FedGrpcError: INVALID_ARGUMENT (wrong size, NaN/Inf, bad
 * chunking), FAILED_PRECONDITION (wrong or closed round, stale base or
 * nonce, duplicate update), PERMISSION_DENIED (a signature that does not
 * verify), DATA_LOSS (chunks missing or reordered), UNAUTHENTICATED,
 * RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED.
 */
function pushDenseUpdate(client, federation, options) {
  const { roundId, baseVersion, values, numSamples = 1, trainLoss = 0, timeoutMs = 60000 } = options;
  const { roundNonce = Buffer.alloc(0), baseSha256 = Buffer.alloc(0) } = options;
  if (!(values instanceof Float32Array)) throw new TypeError('values must be a Float32Array');
  const header = {
    client_id: federation.clientId,
    session_token: federation.sessionToken,
    round_id: roundId,
    base_version: baseVersion,
    kind: options.kind || 'UPDATE_KIND_PSEUDO_GRADIENT',
    codec: 'CODEC_DENSE_FP32',
    num_coordinates: values.length,
    num_samples: numSamples,
    train_loss: trainLoss,
    round_nonce: roundNonce,
    base_model_sha256: baseSha256,
  };
  // Set only for BLAKE3: a SHA-256 header reads as it did before the field.
  if (federation.updateHash !== 'HASH_ALGORITHM_SHA256') header.hash_algorithm = federation.updateHash;
  const chunks = Math.ceil(values.length / federation.coordsPerChunk);
  return new Promise((resolve, reject) => {
    let ended = false;
    const call = client.PushUpdate({ deadline: deadline(timeoutMs) }, (err, response) => {
      ended = true;
      if (err) return reject(rpcError('PushUpdate', err));
      resolve({ ...response, chunks, payloadBytes: values.length * FP32_BYTES });
    });
    writeAll(call, updateMessages(federation, header, values), () => ended).catch((error) => {
      call.cancel();
      reject(error);
    });
  });
}

/** Seed an unseeded federation (JoinResponse.seed_model) with `weights`. */
function pushInitialWeights(client, federation, weights, timeoutMs = 60000) {
  return pushDenseUpdate(client, federation, {
    roundId: 0,
    baseVersion: 0,
    values: weights,
    kind: 'UPDATE_KIND_INITIAL_WEIGHTS',
    roundNonce: federation.roundNonce,
    timeoutMs,
  });
}

module.exports = { FP32_BYTES, pullModel, pushDenseUpdate, pushInitialWeights };
