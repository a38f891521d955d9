"""Secure-aggregation core cost: client masking, coordinator unmasking, bytes.

One round of `fedgrpc.secagg` in one process (no gRPC), for n = 8 and 32
clients, a 10M-parameter model at 1 % density (100k announced positions,
int8 codes) and 10 % of the clients dropping after sharing keys (the
expensive case for the coordinator: it must rebuild their mask keys and
strip their pairwise masks from every surviving neighbour's input).

Reported per n (seconds are one run on one thread; the machine is shared):

- client_keys_s: median client time for advertise + share_keys +
  receive_shares (X25519, HKDF, Shamir, AES-GCM);
- client_mask_s: median client time to lift and mask its 100k values;
- server_sum_s: coordinator time to add all masked inputs into the ring sum;
- server_unmask_s: coordinator time for `recover` (rebuild secrets, subtract
  the survivors' self masks and the dropped clients' pairwise masks);
- bytes_per_client: what one client sends and receives in each phase, as
  raw field sizes (keys, signatures, envelopes, share values, ring values),
  excluding protobuf framing; `masked_values` vs `plain_int8_values` is the
  cost of the ring (m = 8 + ceil(log2 n) bits in a uint16).

One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from _util import log

from fedgrpc.crypto import PrivateKey
from fedgrpc.secagg import ClientRound, RoundSetup, ServerRound, SurvivorList
from fedgrpc.secagg.sealing import ENVELOPE_BYTES
from fedgrpc.secagg.shamir import ELEMENT_BYTES

T = TypeVar("T")
SIGNATURE_BYTES = 64
KEY_BYTES = 32


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _bytes_per_client(setup: RoundSetup, k_positions: int) -> dict[str, int]:
    graph, ring = setup.graph(), setup.ring()
    neighbours, t = graph.degree, graph.threshold
    id_bytes = max(len(c) for c in setup.participants)
    return {
        "advertise_up": 2 * KEY_BYTES + SIGNATURE_BYTES,
        "key_directory_down": len(setup.participants)
        * (id_bytes + 2 * KEY_BYTES + SIGNATURE_BYTES),
        "share_package_up": neighbours * (id_bytes + ENVELOPE_BYTES),
        "share_inbox_down": neighbours * (id_bytes + ENVELOPE_BYTES),
        "masked_values_up": k_positions * ring.dtype.itemsize,
        "plain_int8_values_up": k_positions,
        "confirmation_up": SIGNATURE_BYTES,
        "unmask_request_down": len(setup.participants) * id_bytes
        + t * (id_bytes + SIGNATURE_BYTES),
        "unmask_response_up": (neighbours + 1) * (id_bytes + 4 + ELEMENT_BYTES),
    }


def run_round(n: int, size: int, density: float, dropout: float) -> dict[str, Any]:
    """One round; returns the timings and sizes described in the module doc."""
    rng = np.random.default_rng(n)
    ids = tuple(f"client-{i:03d}" for i in range(n))
    setup = RoundSetup(
        session_id=b"bench",
        round_id=1,
        participants=ids,
        graph_seed=rng.bytes(32),
        value_bits=8,
    )
    positions = np.sort(rng.choice(size, int(size * density), replace=False))
    codes = {c: rng.integers(-127, 128, positions.size).astype(np.int8) for c in ids}
    keys = {c: PrivateKey.generate() for c in ids}
    publics = {c: key.public_key for c, key in keys.items()}
    clients = {c: ClientRound(setup, c, keys[c], publics) for c in ids}
    server = ServerRound(setup, positions, identities=publics)
    dropped = set(ids[n - max(1, math.ceil(dropout * n)) :])

    key_time = dict.fromkeys(ids, 0.0)
    for c in ids:
        advert, key_time[c] = _timed(clients[c].advertise)
        server.receive_advertisement(advert)
    directory = server.close_advertise()
    for c in ids:
        package, spent = _timed(clients[c].share_keys, directory)
        key_time[c] += spent
        server.receive_share_package(package)
    server.close_share_keys()
    for c in ids:
        inbox = server.share_inbox(c)
        key_time[c] += _timed(clients[c].receive_shares, inbox)[1]

    mask_time, sum_time = [], 0.0
    for c in ids:
        if c in dropped:
            continue  # dropped after sharing keys: never sends its input
        masked, spent = _timed(clients[c].mask_input, positions, codes[c])
        mask_time.append(spent)
        sum_time += _timed(server.receive_masked_input, masked)[1]
    survivors: SurvivorList = server.close_masked_input()
    for c in survivors.survivors:
        server.receive_confirmation(clients[c].sign_survivors(survivors))
    server.close_consistency()
    for c in server.confirmed:
        server.receive_unmask_response(clients[c].unmask(server.unmask_request(c)))
    result, unmask_time = _timed(server.recover)

    expected = np.sum([codes[c].astype(np.int64) for c in survivors.survivors], axis=0)
    if not np.array_equal(result.total, expected):
        raise AssertionError("secure sum differs from the plain sum")
    graph = setup.graph()
    return {
        "n_clients": n,
        "positions": int(positions.size),
        "dropped": len(dropped),
        "degree": graph.degree,
        "threshold": graph.threshold,
        "ring_bits": setup.ring().bits,
        "client_keys_s": round(statistics.median(key_time.values()), 4),
        "client_mask_s": round(statistics.median(mask_time), 4),
        "server_sum_s": round(sum_time, 4),
        "server_unmask_s": round(unmask_time, 4),
        "bytes_per_client": _bytes_per_client(setup, int(positions.size)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--dropout", type=float, default=0.1)
    args = parser.parse_args()
    rounds = []
    for n in args.clients:
        log("secagg_core", f"n={n}")
        rounds.append(run_round(n, args.size, args.density, args.dropout))
    print(json.dumps({"bench": "secagg_core", "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
