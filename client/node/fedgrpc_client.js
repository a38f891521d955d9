'use strict';
/**
 * A Node.js client for fedgrpc.v1.CoordinatorService.
 *
 * Loads protos/fedgrpc/v1/*.proto at run time with @grpc/proto-loader (no
 * code generation) and speaks the same protocol as the Python client in
 * fedgrpc/client/: Join, a Session stream with heartbeats and round events,
 * PullModel, and PushUpdate of dense little-endian float32 pseudo-gradients
 * (CODEC_DENSE_FP32) cut into chunks of RoundConfig.chunk_bytes.
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

/**
 * Join the federation. Resolves to the federation: credentials, the round
 * config and `coordsPerChunk`, the coordinates one UpdateChunk carries.
 *
 * Rejects with FedGrpcError: INVALID_ARGUMENT (spec differs from the
 * federation's), FAILED_PRECONDITION (inner steps or codec do not fit; this
 * client speaks only CODEC_DENSE_FP32), RESOURCE_EXHAUSTED, UNAVAILABLE.
 */
function join(client, { name, spec, innerSteps = 0, timeoutMs = 30000 }) {
  const request = {
    client_name: name,
    model_spec: spec,
    supported_codecs: ['CODEC_DENSE_FP32'],
    inner_steps: innerSteps,
    library_version: 'fedgrpc-node/0.1.0',
  };
  return new Promise((resolve, reject) => {
    client.Join(request, { deadline: deadline(timeoutMs) }, (err, response) => {
      if (err) return reject(rpcError('Join', err));
      resolve(federationFrom(response));
    });
  });
}

function federationFrom(response) {
  const config = response.round_config;
  const chunkBytes = config.chunk_bytes || DEFAULT_CHUNK_BYTES;
  // As fedgrpc/wire/chunking.py: chunks end on float32 boundaries and never
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
  status: grpc.status,
  ...spec,
  ...session,
  ...transfer,
};
