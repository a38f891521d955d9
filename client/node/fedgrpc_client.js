'use strict';
/**
 * A Node.js client for fedgrpc.v1.CoordinatorService.
 *
 * Loads protos/fedgrpc/v1/*.proto at run time with @grpc/proto-loader (no
 * code generation) and speaks the same protocol as the Python client in
 * fedgrpc/client/: a challenge-response Join signed with an Ed25519 key, a
 * Session stream with heartbeats and round events, PullModel (checking the
 * coordinator's signature and the weights' SHA-256), and PushUpdate of
 * dense little-endian float32 pseudo-gradients (CODEC_DENSE_FP32) cut into
 * chunks of RoundConfig.chunk_bytes, each chunk signed (signing.js).
 *
 * Messages use the .proto field names (keepCase), enums as their names
 * ('DTYPE_FLOAT32'), bytes as Buffers and 64-bit integers as JS numbers:
 * every uint64 in fedgrpc.v1 is a count, offset, round or version far below
 * 2^53, so no precision is lost.
 *
 * Failed calls reject with `FedGrpcError`, whose `code` is the gRPC status
 * code, `codeName` its name and `details` the coordinator's message.
 */

const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { FedGrpcError, rpcError, deadline } = require('./errors.js');
const session = require('./session.js');
const signing = require('./signing.js');
const spec = require('./spec.js');
const transfer = require('./transfer.js');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const LOADER_OPTIONS = {
  keepCase: true,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};
/** Largest chunk a coordinator may announce (16 MiB) plus framing room. */
const MAX_MESSAGE_BYTES = (16 << 20) + (64 << 10);
const DEFAULT_CHUNK_BYTES = 1 << 20;

let cachedPackage = null;

/** The fedgrpc.v1 package as grpc-js service constructors and message types. */
function loadProtos() {
  if (cachedPackage === null) {
    const files = ['common.proto', 'coordinator.proto', 'admin.proto'].map((f) =>
      path.join(PROTO_ROOT, 'fedgrpc', 'v1', f),
    );
    const definition = protoLoader.loadSync(files, LOADER_OPTIONS);
    cachedPackage = grpc.loadPackageDefinition(definition).fedgrpc.v1;
  }
  return cachedPackage;
}

/** A CoordinatorService stub on an insecure channel to `target` ("host:port"). */
function connect(target) {
  const { CoordinatorService } = loadProtos();
  return new CoordinatorService(target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  });
}

// -- Join ------------------------------------------------------------------

/** A unary call as a promise rejecting with FedGrpcError. */
function unary(client, rpc, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    client[rpc](request, { deadline: deadline(timeoutMs) }, (err, response) => {
      if (err) return reject(rpcError(rpc, err));
      resolve(response);
    });
  });
}

/**
 * Join the federation: GetJoinChallenge, check the coordinator's key
 * against `coordinatorKey` (a hex fingerprint; unset trusts the key it
 * presents), then Join with `identity` (signing.loadIdentity; default a
 * throwaway key, which only an open-enrollment coordinator admits) signing
 * the Join statement. Resolves to the federation: credentials, the round
 * config, `coordsPerChunk` (coordinates per UpdateChunk) and what signing
 * needs (identity, coordinator key, round nonce, `updateHash`). `hashes`
 * lists the hashes to offer, for updates and for pulled model digests alike
 * (default signing.SUPPORTED_HASHES: BLAKE3 then SHA-256;
 * ['HASH_ALGORITHM_SHA256'] keeps to FIPS algorithms).
 *
 * Rejects with FedGrpcError: UNAUTHENTICATED (key not allowed, or the proof
 * failed), INVALID_ARGUMENT (spec differs from the federation's),
 * FAILED_PRECONDITION (inner steps or codec do not fit; this client speaks
 * only CODEC_DENSE_FP32), RESOURCE_EXHAUSTED, UNAVAILABLE; with an Error if
 * the coordinator's key is not the pinned one.
 */
async function join(client, options) {
  const { name, spec, innerSteps = 0, timeoutMs = 30000 } = options;
  const identity = options.identity || signing.loadIdentity(null);
  const challenge = await unary(client, 'GetJoinChallenge', {}, timeoutMs);
  const coordinator = signing.publicKeyFromRecord(challenge.coordinator_key);
  const pin = options.coordinatorKey;
  if (pin && pin.toLowerCase() !== coordinator.fingerprint) {
    throw new Error(`the coordinator presented key ${coordinator.fingerprint}, not the pinned ${pin}`);
  }
  const signed = signing.joinStatement({
    runId: challenge.run_id,
    nonce: challenge.nonce,
    coordinatorRaw: coordinator.raw,
    clientRaw: identity.raw,
    clientName: name,
    specDigest: spec.digest,
  });
  const request = {
    client_name: name,
    model_spec: spec,
    supported_codecs: ['CODEC_DENSE_FP32'],
    supported_hashes: options.hashes || signing.SUPPORTED_HASHES,
    // The same list for the models it pulls (ModelHeader.weights_hash):
    // transfer.js checks either hash.
    model_hashes: options.hashes || signing.SUPPORTED_HASHES,
    inner_steps: innerSteps,
    library_version: 'fedgrpc-node/0.1.0',
    client_key: { algorithm: 'SIGNATURE_ALGORITHM_ED25519', public_key: identity.raw },
    challenge_nonce: challenge.nonce,
    join_signature: signing.sign(identity, signed),
  };
  const response = await unary(client, 'Join', request, timeoutMs);
  return { ...federationFrom(response), identity, coordinator };
}

function federationFrom(response) {
  const config = response.round_config;
  const chunkBytes = config.chunk_bytes || DEFAULT_CHUNK_BYTES;
  // As fedgrpc/domain/chunks.py: chunks end on float32 boundaries and never
  // exceed chunk_bytes or the announced block size.
  let coordsPerChunk = Math.max(1, Math.floor(chunkBytes / transfer.FP32_BYTES));
  const block = config.codec_params ? config.codec_params.block_coordinates : 0;
  if (block) coordsPerChunk = Math.min(coordsPerChunk, block);
  return {
    clientId: response.client_id,
    sessionToken: response.session_token,
    runId: response.run_id,
    roundConfig: config,
    modelSpec: response.model_spec,
    currentRound: response.current_round,
    modelVersion: response.model_version,
    seedModel: response.seed_model,
    runFinished: response.run_finished,
    roundNonce: response.round_nonce,
    signed: config.update_signatures_required,
    // The hash our updates use (older coordinators announce none: SHA-256).
    updateHash: signing.HASHES[config.update_hash] ? config.update_hash : 'HASH_ALGORITHM_SHA256',
    chunkBytes,
    coordsPerChunk,
  };
}

module.exports = {
  FedGrpcError,
  PROTO_ROOT,
  loadProtos,
  connect,
  join,
  loadIdentity: signing.loadIdentity,
  status: grpc.status,
  ...spec,
  ...session,
  ...transfer,
};
