#!/usr/bin/env node
'use strict';
/**
 * A Node.js worker in a fedgrpc federation: join the coordinator, pull the
 * global weights, then for each round push a dense pseudo-gradient and load
 * the next model.
 *
 *   node client/node/example.js --target 127.0.0.1:7070 --rounds 2 [--delta 0.01]
 *
 * It trains nothing: in round k it sends the pseudo-gradient
 * `delta * k * ((i % 7) - 3)` for flat coordinate i, a pattern a test can
 * predict. The model defaults to the shape of torch.nn.Linear(8, 4); pass
 * --spec to match another federation. It signs with --identity-key (a
 * PKCS#8 PEM from `fedgrpc keygen`; default a throwaway key, which only an
 * open-enrollment coordinator admits) and can pin the coordinator's key
 * fingerprint with --coordinator-key; it offers BLAKE3 and SHA-256 for its
 * update hashes, only SHA-256 with --sha256-only. One JSON object per line on stdout
 * says what happened; exit 0 when done, 1 on a gRPC error, 2 on bad flags.
 */

const crypto = require('node:crypto');
const { parseArgs } = require('node:util');

const fedgrpc = require('./fedgrpc_client.js');

const DEFAULT_SPEC = [
  { name: 'weight', shape: [4, 8] },
  { name: 'bias', shape: [4] },
];
const USAGE = `usage: node example.js --target HOST:PORT [--rounds N] [--delta D]
  [--spec JSON] [--name NAME] [--num-samples N] [--timeout-s S] [--heartbeat-s S]
  [--identity-key PEM] [--coordinator-key SHA256HEX] [--sha256-only]

  --spec  tensors in the federation's order, as JSON:
          '[{"name":"weight","shape":[4,8]},{"name":"bias","shape":[4]}]'
          (dtype defaults to float32; also float16, bfloat16, float64)`;

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      target: { type: 'string' },
      rounds: { type: 'string', default: '2' },
      delta: { type: 'string', default: '0.01' },
      spec: { type: 'string' },
      name: { type: 'string', default: `node:${process.pid}` },
      'num-samples': { type: 'string', default: '1' },
      'timeout-s': { type: 'string', default: '60' },
      'heartbeat-s': { type: 'string', default: '5' },
      'identity-key': { type: 'string' },
      'sha256-only': { type: 'boolean', default: false },
      'coordinator-key': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.target) throw new Error('--target is required');
  const number = (flag, min) => {
    const value = Number(values[flag]);
    if (!Number.isFinite(value) || value < min) throw new Error(`--${flag} must be a number >= ${min}`);
    return value;
  };
  return {
    target: values.target,
    rounds: number('rounds', 1),
    delta: number('delta', -Infinity),
    spec: fedgrpc.modelSpec(values.spec ? JSON.parse(values.spec) : DEFAULT_SPEC),
    name: values.name,
    numSamples: number('num-samples', 1),
    timeoutMs: number('timeout-s', 0) * 1000,
    heartbeatMs: number('heartbeat-s', 0.01) * 1000,
    identity: fedgrpc.loadIdentity(values['identity-key']),
    coordinatorKey: values['coordinator-key'],
    hashes: values['sha256-only'] ? ['HASH_ALGORITHM_SHA256'] : undefined,
  };
}

function emit(event, fields) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

/** Round k's pseudo-gradient: delta * k * ((i % 7) - 3). */
function pseudoGradient(numCoordinates, delta, k) {
  const values = new Float32Array(numCoordinates);
  for (let i = 0; i < numCoordinates; i += 1) values[i] = delta * k * ((i % 7) - 3);
  return values;
}

function outcomeName(outcome) {
  return outcome.replace('ROUND_OUTCOME_', '').toLowerCase();
}

async function pull(client, federation, minVersion, timeoutMs) {
  const model = await fedgrpc.pullModel(client, federation, { minVersion, timeoutMs });
  emit('pulled', {
    model_version: model.modelVersion,
    round_id: model.roundId,
    bytes: model.data.length,
    chunks: model.chunks,
    weights_sha256: crypto.createHash('sha256').update(model.data).digest('hex'),
    weights_digest: model.sha256.toString('hex'), // as signed, under weights_hash
    weights_hash: model.weightsHash,
  });
  return model;
}

/** Seed an unseeded federation with zeros (another seeder winning is fine). */
async function seed(client, federation, options) {
  const zeros = new Float32Array(fedgrpc.numCoordinates(federation.modelSpec));
  try {
    const ack = await fedgrpc.pushInitialWeights(client, federation, zeros, options.timeoutMs);
    emit('seeded', { bytes: ack.payloadBytes, chunks: ack.chunks });
  } catch (err) {
    if (err.code !== fedgrpc.status.FAILED_PRECONDITION) throw err;
    emit('seed_lost', { reason: err.details });
  }
}

/** One sync point, as fedgrpc/client/sync.py runs it; returns the model now loaded. */
async function syncRound(k, client, federation, session, model, options) {
  const { timeoutMs } = options;
  const version = model.modelVersion;
  const opened = await fedgrpc.waitForRound(session, version, timeoutMs);
  if (opened.finished !== undefined) return model; // the run ended: nothing to push
  if (opened.stale !== undefined) {
    emit('stale', { model_version: version, latest: opened.stale });
    return pull(client, federation, opened.stale, timeoutMs);
  }
  const values = pseudoGradient(fedgrpc.numCoordinates(federation.modelSpec), options.delta, k);
  try {
    const ack = await fedgrpc.pushDenseUpdate(client, federation, {
      roundId: opened.round_id,
      baseVersion: version,
      roundNonce: opened.round_nonce,
      baseSha256: model.sha256,
      values,
      numSamples: options.numSamples,
      timeoutMs,
    });
    emit('pushed', {
      round_id: opened.round_id,
      base_version: version,
      chunks: ack.chunks,
      bytes: ack.payloadBytes,
      updates_in_round: ack.updates_in_round,
      update_sha256: ack.update_sha256.toString('hex'),
    });
  } catch (err) {
    if (err.code !== fedgrpc.status.FAILED_PRECONDITION) throw err;
    emit('missed', { round_id: opened.round_id, reason: err.details });
  }
  const closed = await fedgrpc.waitForRoundClosed(session, opened.round_id, timeoutMs);
  emit('round_closed', {
    round_id: closed.round_id,
    outcome: outcomeName(closed.outcome),
    model_version: closed.model_version,
    num_updates: closed.num_updates,
    reason: closed.reason,
    run_finished: Boolean(closed.run_finished),
  });
  if (closed.outcome !== 'ROUND_OUTCOME_APPLIED') return model;
  return pull(client, federation, closed.model_version, timeoutMs);
}

async function run(options) {
  const client = fedgrpc.connect(options.target);
  let session = null;
  try {
    const federation = await fedgrpc.join(client, {
      name: options.name,
      spec: options.spec,
      timeoutMs: options.timeoutMs,
      identity: options.identity,
      coordinatorKey: options.coordinatorKey,
      hashes: options.hashes,
    });
    const config = federation.roundConfig;
    emit('joined', {
      client_id: federation.clientId,
      run_id: federation.runId,
      model_version: federation.modelVersion,
      current_round: federation.currentRound,
      seed_model: federation.seedModel,
      codec: config.update_codec,
      outer_optimizer: config.outer_optimizer,
      chunk_bytes: federation.chunkBytes,
      coords_per_chunk: federation.coordsPerChunk,
      key_sha256: federation.identity.fingerprint,
      coordinator_key_sha256: federation.coordinator.fingerprint,
      signed: federation.signed,
      update_hash: federation.updateHash,
    });
    session = fedgrpc.openSession(client, federation, { heartbeatMs: options.heartbeatMs });
    if (federation.seedModel) await seed(client, federation, options);
    // The coordinator holds this pull until some client has seeded the model.
    let model = await pull(client, federation, 0, options.timeoutMs);
    let rounds = 0;
    while (rounds < options.rounds && !session.runFinished) {
      rounds += 1;
      model = await syncRound(rounds, client, federation, session, model, options);
    }
    // A coordinator with max_rounds ends the run: stop cleanly, not on an error.
    if (session.runFinished) emit('finished', { rounds, model_version: model.modelVersion });
    emit('done', { rounds, model_version: model.modelVersion });
  } finally {
    if (session !== null) await session.close('example finished');
    client.close();
  }
}

async function main() {
  let options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`example.js: ${err.message}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  try {
    await run(options);
  } catch (err) {
    const fields = err instanceof fedgrpc.FedGrpcError
      ? { rpc: err.rpc, code: err.codeName, details: err.details }
      : { details: err.message };
    emit('error', fields);
    process.stderr.write(`example.js: ${err.message}\n`);
    process.exitCode = 1;
  }
}

main();
