"""Secure-aggregation core cost against the AES floor, in one process (no gRPC).

One round of `fedgrpc.secagg` per setting, every client and the coordinator
in this process, real keys and real AES:

- dense (the safe default): n = 8 and 32 clients, --size (1.0M) positions,
  every coordinate masked, int8 codes quantised from a float update with
  the round's fixed-point scale; 3 clients (1 at n = 8) drop after sharing
  keys, so the coordinator must rebuild their mask keys and strip their
  pairwise masks from every surviving neighbour's input;
- sparse: a --sparse-size (10M) model at --density (1 %): 100k announced
  positions, 10 % of the clients dropping (a sparse set costs O(k) blocks).

The floor, measured in this run: n - 1 neighbour keystreams over the d
positions with `cryptography`'s AES-CTR (2 bytes of keystream per position,
the 16-bit lanes of keystream layout 2; plain calls, no buffer reuse), each
added into a uint32 accumulator, reduced to m bits once at the end. No
client can mask for less: it needs those keystreams and those adds.

Reported per setting (CPU seconds of this thread; medians over clients; the
floor the best of 5; the machine is shared, so the ratios are what travel):

- floor_cpu_s, floor_keystream_gbps: the floor above (dense only);
- client_mask_cpu_s: `ClientRound.mask_input` (lift, self mask, n - 1
  pairwise masks: key agreement + keystream each), and / floor;
- client_encode_cpu_s: everything a client computes on its update per push,
  from float values to wire bytes: quantise, mask, bit-pack the chunks;
- client_keys_s: advertise + share_keys + receive_shares (X25519, HKDF,
  Shamir, AES-GCM), wall;
- server_sum_s: the coordinator adding every masked input into the ring sum;
- server_unmask_s: `recover` (rebuild secrets, strip the survivors' self
  masks and the dropped clients' pairwise masks), wall;
- bytes_per_client: raw field sizes per phase (no protobuf framing).

One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from _util import log
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedgrpc.crypto import PrivateKey
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES
from fedgrpc.secagg import (
    ClientRound,
    FixedPointScale,
    MaskedInput,
    RoundSetup,
    ServerRound,
    SurvivorList,
)
from fedgrpc.secagg.prg import PRG_NONCE, Keystream
from fedgrpc.secagg.sealing import ENVELOPE_BYTES
from fedgrpc.secagg.shamir import ELEMENT_BYTES
from fedgrpc.wire.ring import encode_ring_values, ring_values_per_chunk

T = TypeVar("T")
SIGNATURE_BYTES = 64
KEY_BYTES = 32
CLIP = 0.05
"""The round's clip (`secagg_clip`'s default); updates ~ N(0, 0.02)."""
FLOOR_REPEATS = 5


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _cpu(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.thread_time()
    result = fn(*args)
    return result, time.thread_time() - start


def keystream_floor(neighbours: int, positions: int, ring_bits: int) -> float:
    """CPU seconds of the floor (module docstring): best of FLOOR_REPEATS."""
    rng = np.random.default_rng(0)
    seeds = [rng.bytes(32) for _ in range(neighbours)]
    best = float("inf")
    for _ in range(FLOOR_REPEATS):
        started = time.thread_time()
        acc = np.zeros(positions, dtype=np.uint32)
        for seed in seeds:
            ctr = modes.CTR(PRG_NONCE + bytes(8))
            stream = (
                Cipher(algorithms.AES(seed), ctr)
                .encryptor()
                .update(bytes(2 * positions))
            )
            acc += np.frombuffer(stream, dtype="<u2")
        acc &= np.uint32((1 << ring_bits) - 1)
        best = min(best, time.thread_time() - started)
    return best


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
        "masked_values_up": (k_positions * ring.bits + 7) // 8,  # bit-packed
        "plain_int8_values_up": k_positions,
        "confirmation_up": SIGNATURE_BYTES,
        "unmask_request_down": len(setup.participants) * id_bytes
        + t * (id_bytes + SIGNATURE_BYTES),
        "unmask_response_up": (neighbours + 1) * (id_bytes + 4 + ELEMENT_BYTES),
    }


def _encode(
    client: ClientRound, positions: np.ndarray, x: np.ndarray, setup: RoundSetup
) -> tuple[np.ndarray, MaskedInput]:
    """Quantise, mask and bit-pack one client's update, as a push does."""
    scale = FixedPointScale(CLIP, setup.value_bits)
    codes = scale.quantise(x, np.random.default_rng()).codes
    masked = client.mask_input(positions, codes)
    ring = setup.ring()
    step = ring_values_per_chunk(ring, DEFAULT_CHUNK_BYTES)
    for offset in range(0, masked.values.size, step):
        encode_ring_values(masked.values[offset : offset + step], ring)
    return codes, masked


def _exchange_keys(
    ids: tuple[str, ...], clients: dict[str, ClientRound], server: ServerRound
) -> list[float]:
    """Advertise, share and deliver; each client's wall seconds."""
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
        key_time[c] += _timed(clients[c].receive_shares, server.share_inbox(c))[1]
    return list(key_time.values())


def run_round(n: int, positions: np.ndarray, drops: int) -> dict[str, Any]:
    """One round; the timings and sizes of the module docstring.

    Odd-numbered survivors time `mask_input` alone on random int8 codes;
    even-numbered ones the whole encode (quantise, mask, pack) of a float
    update, so both figures come from one round.
    """
    rng = np.random.default_rng(n)
    ids = tuple(f"client-{i:03d}" for i in range(n))
    setup = RoundSetup(session_id=b"bench", round_id=1, participants=ids,
                       graph_seed=rng.bytes(32), value_bits=8)  # fmt: skip
    keys = {c: PrivateKey.generate() for c in ids}
    publics = {c: key.public_key for c, key in keys.items()}
    clients = {c: ClientRound(setup, c, keys[c], publics) for c in ids}
    server = ServerRound(setup, positions, identities=publics)
    key_time = _exchange_keys(ids, clients, server)

    codes: dict[str, np.ndarray] = {}
    mask_cpu, encode_cpu, sum_time = [], [], 0.0
    for i, c in enumerate(ids[: n - drops]):  # the last `drops` never send
        if i % 2:
            codes[c] = rng.integers(-127, 128, positions.size).astype(np.int8)
            masked, spent = _cpu(clients[c].mask_input, positions, codes[c])
            mask_cpu.append(spent)
        else:
            x = rng.normal(0.0, 0.02, positions.size).astype(np.float32)
            (codes[c], masked), spent = _cpu(_encode, clients[c], positions, x, setup)
            encode_cpu.append(spent)
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
        "dropped": drops,
        "degree": graph.degree,
        "threshold": graph.threshold,
        "ring_bits": setup.ring().bits,
        "keystream_blocks_per_seed": Keystream(positions, setup.ring()).blocks,
        "client_keys_s": round(statistics.median(key_time), 4),
        "client_mask_cpu_s": round(statistics.median(mask_cpu), 4),
        "client_encode_cpu_s": round(statistics.median(encode_cpu), 4),
        "server_sum_s": round(sum_time, 4),
        "server_unmask_s": round(unmask_time, 4),
        "bytes_per_client": _bytes_per_client(setup, int(positions.size)),
    }


def dense(n: int, size: int, drops: int) -> dict[str, Any]:
    """The dense round at n, with its floor and the ratios to it."""
    row = run_round(n, np.arange(size, dtype=np.uint64), drops)
    floor = keystream_floor(n - 1, size, row["ring_bits"])
    row["floor_cpu_s"] = round(floor, 4)
    row["floor_keystream_gbps"] = round((n - 1) * 2 * size / floor / 1e9, 2)
    row["ratio_mask_vs_floor"] = round(row["client_mask_cpu_s"] / floor, 2)
    row["ratio_encode_vs_floor"] = round(row["client_encode_cpu_s"] / floor, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 4, 8; small sizes")
    parser.add_argument("--size", type=int, default=1_000_000,
                        help="positions of the dense rounds")  # fmt: skip
    parser.add_argument("--sparse-size", type=int, default=10_000_000)
    parser.add_argument("--density", type=float, default=0.01)
    args = parser.parse_args()
    counts = (4, 8) if args.quick else (8, 32)
    size = 50_000 if args.quick else args.size
    sparse_size = 1_000_000 if args.quick else args.sparse_size
    rows: dict[str, Any] = {}
    for n in counts:
        drops = 3 if n >= 32 else 1
        log("secagg_core", f"n={n} dense: {size} positions, {drops} dropped")
        rows[f"n{n}_dense"] = dense(n, size, drops)
    for n in counts:
        k = int(sparse_size * args.density)
        log("secagg_core", f"n={n} sparse: {k} of {sparse_size} positions")
        rng = np.random.default_rng(n)
        positions = np.sort(rng.choice(sparse_size, k, replace=False))
        rows[f"n{n}_sparse"] = run_round(n, positions, max(1, n // 10))
    largest = counts[-1]
    print(json.dumps({
        "bench": "secagg_core",
        "rounds": rows,
        "goals": {
            **{f"client_mask_cpu<=2x_floor_n{n}":
               rows[f"n{n}_dense"]["ratio_mask_vs_floor"] <= 2 for n in counts},
            f"unmask_{rows[f'n{largest}_dense']['dropped']}_dropped<=0.5s_n{largest}":
                rows[f"n{largest}_dense"]["server_unmask_s"] <= 0.5,
        },
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
