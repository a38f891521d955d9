'use strict';
/**
 * Identity and signatures, byte for byte as fedgrpc/crypto/signing.py.
 *
 * Every signature covers a *statement*: fields, each its byte length as a
 * uint32 little-endian followed by its bytes. The first three fields are the
 * domain ("fedgrpc.v1.Join", ".UpdateHeader", ".UpdateChunk", ".UpdateCommit",
 * ".ModelHeader"), the version byte 0x01 and the algorithm ("ed25519");
 * integers are 8-byte little-endian, doubles and floats IEEE 754 little-endian
 * (8 and 4 bytes), strings UTF-8. coordinator.proto lists each statement's
 * fields. Node's crypto does Ed25519 natively (`crypto.sign(null, ...)`).
 *
 * An update's payload digests and chain use the hash the coordinator chose
 * at Join (RoundConfig.update_hash): BLAKE3 (@noble/hashes) when offered and
 * allowed, else SHA-256; the header statement names a hash other than SHA-256.
 */

const crypto = require('node:crypto');
const fs = require('node:fs');
const { blake3 } = require('@noble/hashes/blake3.js');

const ALGORITHM = 'ed25519';
const VERSION = Buffer.from([1]);
/** Enum numbers the statements carry (common.proto, coordinator.proto). */
const CODEC_DENSE_FP32 = 1;
const VALUE_FORMAT_FP32 = 1;
const UPDATE_KINDS = { UPDATE_KIND_PSEUDO_GRADIENT: 1, UPDATE_KIND_INITIAL_WEIGHTS: 2 };

const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const field = (bytes) => Buffer.concat([u32(bytes.length), bytes]);
const u64 = (n) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return field(b);
};
const f64 = (x) => {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(x);
  return field(b);
};
const f32 = (x) => {
  const b = Buffer.alloc(4);
  b.writeFloatLE(x); // rounds to float32 as protobuf does; overflow gives Infinity
  return field(b);
};
const text = (s) => field(Buffer.from(s, 'utf8'));
const sha256 = (data) => crypto.createHash('sha256').update(data).digest();
const blake3Digest = (data) => Buffer.from(blake3(data));
/** Each update hash: its name inside the header statement and its function. */
const HASHES = {
  HASH_ALGORITHM_SHA256: {
    name: 'sha256', label: 'SHA-256', digest: sha256, create: () => crypto.createHash('sha256'),
  },
  HASH_ALGORITHM_BLAKE3: {
    name: 'blake3', label: 'BLAKE3', digest: blake3Digest, create: () => blake3.create(),
  },
};
/** What this client offers at Join (JoinRequest.supported_hashes), preferred first. */
const SUPPORTED_HASHES = ['HASH_ALGORITHM_BLAKE3', 'HASH_ALGORITHM_SHA256'];

/** The signed bytes: domain, version, algorithm, then `fields` (already framed). */
function statement(domain, fields) {
  return Buffer.concat([text(domain), field(VERSION), text(ALGORITHM), ...fields]);
}

// -- keys --------------------------------------------------------------------

/** A signing identity: a private KeyObject, its raw public key and fingerprint. */
function identity(privateKey) {
  const publicKey = crypto.createPublicKey(privateKey);
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
  return { privateKey, raw, fingerprint: sha256(raw).toString('hex') };
}

/** Load a PKCS#8 PEM private key (`fedgrpc keygen` writes them), or make a throwaway one. */
function loadIdentity(path) {
  if (!path) return identity(crypto.generateKeyPairSync('ed25519').privateKey);
  return identity(crypto.createPrivateKey(fs.readFileSync(path)));
}

/** A verifying KeyObject from a PublicKeyRecord {algorithm, public_key}. */
function publicKeyFromRecord(record) {
  if (!record || record.algorithm !== 'SIGNATURE_ALGORITHM_ED25519' || record.public_key.length !== 32) {
    throw new Error('the coordinator presented no usable Ed25519 key');
  }
  const key = crypto.createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: record.public_key.toString('base64url') },
    format: 'jwk',
  });
  return { key, raw: record.public_key, fingerprint: sha256(record.public_key).toString('hex') };
}

const sign = (id, message) => crypto.sign(null, message, id.privateKey);

// -- statements --------------------------------------------------------------

/** The Join statement (see JoinRequest in coordinator.proto). */
function joinStatement({ runId, nonce, coordinatorRaw, clientRaw, clientName, specDigest }) {
  return statement('fedgrpc.v1.Join', [
    text(runId), field(nonce), text(ALGORITHM), field(coordinatorRaw),
    field(clientRaw), text(clientName), field(specDigest),
  ]);
}

/**
 * The hash of a ModelHeader's weights_sha256 (ModelHeader.weights_hash; unset:
 * SHA-256, as before the field), as one of HASHES. Throws for a hash this
 * client does not know.
 */
function modelHash(header) {
  const name = header.weights_hash || 'HASH_ALGORITHM_SHA256';
  const hash = HASHES[name === 'HASH_ALGORITHM_UNSPECIFIED' ? 'HASH_ALGORITHM_SHA256' : name];
  if (!hash) throw new Error(`model version ${header.model_version} names an unknown weights hash ${name}`);
  return hash;
}

/**
 * True if `header` (a ModelHeader) carries the coordinator's signature for run
 * `runId`. A weights hash other than SHA-256 is signed as the tag "hash" and its
 * name after the digest (fedgrpc/crypto/statements.py's ModelStatement).
 */
function verifyModelHeader(header, runId, coordinator) {
  const hash = modelHash(header);
  const hashClaim = hash.name === 'sha256' ? [] : [text('hash'), text(hash.name)];
  const signed = statement('fedgrpc.v1.ModelHeader', [
    text(runId), u64(header.model_version), u64(header.round_id),
    field(header.model_spec_digest), u64(header.total_bytes), field(header.weights_sha256),
    ...hashClaim,
  ]);
  return crypto.verify(null, signed, coordinator.key, header.signature);
}

/**
 * Signs one dense float32 update as fedgrpc/crypto/signing.py's UpdateSigner:
 * the header statement, then each chunk (chained by prev_sha256), then the
 * commit over the chain head, every hash with `header.hash_algorithm`
 * (unset: SHA-256).
 */
class UpdateSigner {
  constructor(id, runId, header) {
    this.id = id;
    const hash = HASHES[header.hash_algorithm || 'HASH_ALGORITHM_SHA256'];
    if (!hash) throw new Error(`unknown update hash ${header.hash_algorithm}`);
    this.hash = hash.digest;
    // Appended only when not SHA-256, as older clients' statements end earlier.
    const hashClaim = hash.name === 'sha256' ? [] : [text('hash'), text(hash.name)];
    const codecFields = [u64(CODEC_DENSE_FP32), u64(VALUE_FORMAT_FP32), f64(0)];
    const context = [text(runId), u64(header.round_id), field(header.round_nonce), text(header.client_id)];
    const signed = statement('fedgrpc.v1.UpdateHeader', [
      ...context, u64(header.base_version), field(header.base_model_sha256),
      u64(UPDATE_KINDS[header.kind]), ...codecFields, u64(header.num_coordinates),
      u64(header.num_samples), f32(header.train_loss), ...hashClaim,
    ]);
    this.headerSignature = sign(id, signed);
    this.chain = this.hash(signed);
    this.chunkPrefix = statement('fedgrpc.v1.UpdateChunk', [
      ...context, field(header.base_model_sha256), ...codecFields,
    ]);
    this.commitPrefix = statement('fedgrpc.v1.UpdateCommit', context);
    this.numChunks = 0;
  }

  /** {payload_sha256, prev_sha256, signature} for the next chunk (names predate BLAKE3). */
  signChunk(seq, offset, count, payload) {
    const payloadSha = this.hash(payload);
    const prev = this.chain;
    const signed = Buffer.concat([
      this.chunkPrefix, u64(seq), u64(offset), u64(count), field(payloadSha), field(prev),
    ]);
    this.chain = this.hash(signed);
    this.numChunks += 1;
    return { payload_sha256: payloadSha, prev_sha256: prev, signature: sign(this.id, signed) };
  }

  /** The UpdateCommit fields closing the chain. */
  commit() {
    const signed = Buffer.concat([this.commitPrefix, field(this.chain), u64(this.numChunks)]);
    return { num_chunks: this.numChunks, chain_sha256: this.chain, signature: sign(this.id, signed) };
  }
}

module.exports = {
  HASHES,
  SUPPORTED_HASHES,
  UpdateSigner,
  joinStatement,
  loadIdentity,
  publicKeyFromRecord,
  sha256,
  sign,
  verifyModelHeader,
  modelHash,
};
