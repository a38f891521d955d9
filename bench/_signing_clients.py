"""Client processes for bench/signing.py: joining, pre-signed pushes, Join storms.

Not a benchmark itself (see signing.py). These run in spawned children and
talk raw gRPC with fedgrpc's own signing code, so what they send is exactly
what DiLoCoClient would, minus the work the timing should not include.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
from typing import Any

import grpc
import numpy as np

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc, common_pb2, coordinator_pb2
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.signing import JoinStatement
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES, iter_chunks
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.wire.codec_params import DENSE_FP32_BINDING
from fedgrpc.wire.convert import HASH_FROM_PROTO, HASH_TO_PROTO, spec_to_proto
from fedgrpc.wire.frames import encode_update_chunk, serialize_or_pass
from fedgrpc.wire.signed import (
    commit_message,
    key_from_proto,
    key_to_proto,
    sign_update_header,
)

PB = coordinator_pb2
MODES = ("off", "sha256", "blake3", "blake3_every_chunk")
"""The coordinators compared: unsigned, then signed under each `--update-hash`
(header and commit signed, chunks linked: `--sign-chunks auto`), and BLAKE3
with every chunk signed too (`--sign-chunks always`, what secure rounds do)."""


def _spec(n: int) -> ModelSpec:
    return ModelSpec((TensorSpec("w", (n,), DType.FLOAT32),))


async def _join(
    channel: grpc.aio.Channel, spec: ModelSpec, key: PrivateKey, name: str
) -> PB.JoinResponse:
    """Challenge, signed Join; what every fedgrpc client does."""
    call: Any = channel.unary_unary  # bytes in, bytes out (no serializers)
    challenge = PB.GetJoinChallengeResponse.FromString(
        await call("/fedgrpc.v1.CoordinatorService/GetJoinChallenge")(
            PB.GetJoinChallengeRequest().SerializeToString(), timeout=30
        )
    )
    request = PB.JoinRequest(
        client_name=name,
        model_spec=spec_to_proto(spec),
        supported_codecs=[common_pb2.CODEC_DENSE_FP32],
        supported_hashes=list(HASH_TO_PROTO.values()),  # as DiLoCoClient offers
        model_hashes=list(HASH_TO_PROTO.values()),
        client_key=key_to_proto(key.public_key),
        challenge_nonce=challenge.nonce,
    )
    statement = JoinStatement(
        run_id=challenge.run_id,
        nonce=challenge.nonce,
        coordinator_key=key_from_proto(challenge.coordinator_key),
        client_key=key.public_key,
        client_name=name,
        model_spec_digest=request.model_spec.digest,
    )
    request.join_signature = key.sign(statement.encode())
    reply = await call("/fedgrpc.v1.CoordinatorService/Join")(
        request.SerializeToString(), timeout=30
    )
    return PB.JoinResponse.FromString(reply)


def _frames(
    joined: PB.JoinResponse,
    key: PrivateKey,
    status: admin_pb2.GetStatusResponse,
    values: np.ndarray,
    signed: bool,
) -> list[bytes]:
    """One update's messages, pre-encoded (and signed) as DiLoCoClient sends them."""
    initial = status.model_version == 0 and not status.model_sha256
    header = PB.PushUpdateRequest(
        header=PB.UpdateHeader(
            client_id=joined.client_id,
            session_token=joined.session_token,
            round_id=0 if initial else status.round_id,
            base_version=status.model_version,
            kind=PB.UPDATE_KIND_INITIAL_WEIGHTS
            if initial
            else PB.UPDATE_KIND_PSEUDO_GRADIENT,
            codec=common_pb2.CODEC_DENSE_FP32,
            num_coordinates=values.size,
            num_samples=1,
            round_nonce=status.round_nonce,
            base_model_sha256=status.model_sha256,
        )
    )
    hash_name = HASH_FROM_PROTO[joined.round_config.update_hash]  # what Join chose
    signer = (
        sign_update_header(
            header.header,
            key,
            joined.run_id,
            DENSE_FP32_BINDING,
            hash_name,
            sign_chunks=not joined.round_config.chunk_signatures_optional,
        )
        if signed
        else None
    )
    frames = [header.SerializeToString()]
    for seq, (offset, view) in enumerate(
        iter_chunks(values.data, DEFAULT_CHUNK_BYTES, 4)
    ):
        count = len(view) // 4
        proof = (
            signer.sign_chunk(seq, offset // 4, count, signer.hash(view))
            if signer
            else None
        )
        frames.append(encode_update_chunk(seq, offset // 4, count, view, proof))
    commit = (
        commit_message(signer)
        if signer
        else PB.PushUpdateRequest(commit=PB.UpdateCommit(num_chunks=len(frames) - 1))
    )
    return [*frames, commit.SerializeToString()]


class Target:
    """One coordinator as the ingest client sees it."""

    def __init__(self, address: str, mode: str, n: int) -> None:
        self.address, self.mode, self.n = address, mode, n
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.push = self.channel.stream_unary(
            "/fedgrpc.v1.CoordinatorService/PushUpdate",
            request_serializer=serialize_or_pass,
            response_deserializer=PB.PushUpdateResponse.FromString,
        )
        self.key = PrivateKey.generate()
        self.joined: PB.JoinResponse | None = None

    async def status(self) -> admin_pb2.GetStatusResponse:
        return await self.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=30)

    async def round(self, values: np.ndarray) -> Window:
        """Push one update (seeding first); the coordinator's ingest window."""
        if self.joined is None:
            self.joined = await _join(self.channel, _spec(self.n), self.key, self.mode)
        status = await self.status()
        frames = _frames(self.joined, self.key, status, values, self.mode != "off")

        async def messages() -> Any:
            for frame in frames:
                yield frame

        cpu_before = time.process_time()
        await self.push(messages(), timeout=600)
        client_cpu_s = time.process_time() - cpu_before
        if not (status.model_version or status.round_id):
            return Window(0.0, 0.0, 0.0)  # the seed, which has no window
        done = (await self.status()).recent_rounds[-1]
        return Window(done.ingest_s, done.ingest_cpu_s, client_cpu_s)


@dataclasses.dataclass(frozen=True)
class Window:
    """One timed push: the coordinator's window and what each side spent in it."""

    ingest_s: float
    """Coordinator: first header to last commit."""
    coordinator_cpu_s: float
    """Coordinator process CPU (all threads) in that window."""
    client_cpu_s: float
    """This client process's CPU over the whole push call."""


async def _ingest(addresses: dict[str, str], n: int, rounds: int) -> dict[str, Any]:
    targets = {mode: Target(addresses[mode], mode, n) for mode in MODES}
    values = np.random.default_rng(0).standard_normal(n).astype("<f4") * 1e-3
    windows: dict[str, list[Window]] = {mode: [] for mode in MODES}
    for target in targets.values():
        await target.round(np.zeros(n, "<f4"))  # seed
        await target.round(values)  # warm-up round
    for _ in range(rounds):
        for mode, target in targets.items():  # alternate: same load for both
            windows[mode].append(await target.round(values))
    for target in targets.values():
        await target.channel.close()
    return {
        mode: [dataclasses.asdict(w) for w in windows[mode] if w.ingest_s > 0]
        for mode in MODES
    }


def ingest_main(addresses: dict[str, str], n: int, rounds: int, out: Any) -> None:
    """Child process: the ingest client."""
    try:
        out.put(asyncio.run(_ingest(addresses, n, rounds)))
    except BaseException:
        out.put({"error": traceback.format_exc()})


async def _joins(
    address: str, pems: list[bytes], joins: int, concurrency: int
) -> dict[str, float]:
    keys = [PrivateKey.from_pem(pem) for pem in pems]
    spec = _spec(16)
    async with grpc.aio.insecure_channel(address) as channel:
        await _join(channel, spec, keys[0], "warm-up")
        started = time.perf_counter()
        for i in range(joins):
            await _join(channel, spec, keys[i % len(keys)], f"s{i}")
        sequential = joins / (time.perf_counter() - started)
        started = time.perf_counter()
        for batch in range(0, joins, concurrency):
            names = range(batch, min(joins, batch + concurrency))
            await asyncio.gather(
                *(_join(channel, spec, keys[i % len(keys)], f"c{i}") for i in names)
            )
        concurrent = joins / (time.perf_counter() - started)
    return {"joins_per_s_sequential": sequential, "joins_per_s_concurrent": concurrent}


def joins_main(
    address: str, pems: list[bytes], joins: int, conc: int, out: Any
) -> None:
    """Child process: the joining client."""
    try:
        out.put(asyncio.run(_joins(address, pems, joins, conc)))
    except BaseException:
        out.put({"error": traceback.format_exc()})
