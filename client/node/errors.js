'use strict';
/**
 * How a failed CoordinatorService call surfaces: `FedGrpcError`, carrying
 * the gRPC status code and the coordinator's message verbatim (the same
 * table as fedgrpc/coordinator/services/status.py, read from the other side).
 */

const grpc = require('@grpc/grpc-js');

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

/** A failed CoordinatorService call: `code` is the gRPC status code. */
class FedGrpcError extends Error {
  constructor(rpc, code, details) {
    const codeName = STATUS_NAMES[code] || String(code);
    super(`${rpc} failed with ${codeName}: ${details}`);
    this.name = 'FedGrpcError';
    this.rpc = rpc;
    this.code = code;
    this.codeName = codeName;
    this.details = details;
  }
}

/** A grpc-js ServiceError as a FedGrpcError for `rpc`. */
function rpcError(rpc, err) {
  return new FedGrpcError(rpc, err.code ?? grpc.status.UNKNOWN, err.details || err.message);
}

/** A grpc-js deadline `timeoutMs` from now. */
function deadline(timeoutMs) {
  return Date.now() + timeoutMs;
}

module.exports = { FedGrpcError, rpcError, deadline };
