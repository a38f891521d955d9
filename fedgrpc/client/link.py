"""Everything the client holds on the gRPC side, behind async methods.

`CoordinatorLink` owns the channel, the stub, the credentials, the Session
task and its `RoundTracker`. It is created and used only on the client's
background loop; `DiLoCoClient` reaches it exclusively through
`BackgroundLoop.run(link.method(...))`, so the training thread never touches
a grpc object.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from importlib import metadata

import grpc
import torch

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedgrpc.client.compressed import CompressedUpdates
from fedgrpc.client.connection import Credentials, open_channel, retry_unavailable
from fedgrpc.client.download import PulledModel, pull_model
from fedgrpc.client.rounds import RoundTracker
from fedgrpc.client.session import SessionStream
from fedgrpc.client.transfer import (
    FP32_BYTES,
    PushResult,
    UpdateMeta,
    push_method,
    push_update,
    stream_update,
)
from fedgrpc.compress import CodecConfig, Dense, format_codec, make_codec
from fedgrpc.config import ClientConfig
from fedgrpc.errors import IncompatibleClientError, InvalidUpdateError, WrongRoundError
from fedgrpc.log import get_logger
from fedgrpc.wire.chunking import DEFAULT_CHUNK_BYTES
from fedgrpc.wire.codec_params import (
    WIRE_CODEC_TO_PROTO,
    codec_params_from_proto,
    codec_params_to_proto,
)
from fedgrpc.wire.convert import spec_to_proto
from fedgrpc.wire.spec import ModelSpec

log = get_logger(__name__)


def library_version() -> str:
    """The installed fedgrpc version, reported at Join for the coordinator's logs."""
    try:
        return metadata.version("fedgrpc")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def default_client_name() -> str:
    """host:pid, unique enough to tell clients apart in coordinator logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Federation:
    """What Join told us about the run."""

    run_id: str
    inner_steps: int
    chunk_bytes: int
    model_version: int
    seed_model: bool
    codec: CodecConfig
    """The update codec the coordinator announced."""
    feedback_decay: float
    """Error-feedback decay the coordinator announced (1.0: plain)."""


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """What the user asked of the federation; None follows the coordinator."""

    inner_steps: int | None = None
    compression: CodecConfig | None = None


def announced_codec(
    round_config: common_pb2.RoundConfig, chunk_bytes: int
) -> CodecConfig:
    """The federation's codec, checked against what this client would encode.

    Raises:
        IncompatibleClientError: an unknown codec, or block sizes that differ
            from this version's (the coordinator runs another fedgrpc).
    """
    if not round_config.HasField("codec_params"):
        return Dense(values="fp32")  # a coordinator from before compression
    params = round_config.codec_params
    try:
        codec = codec_params_from_proto(params)
    except InvalidUpdateError as exc:
        raise IncompatibleClientError(f"{exc}; upgrade fedgrpc on this client") from exc
    ours = make_codec(codec).block_coordinates(chunk_bytes)
    if params.block_coordinates and params.block_coordinates != ours:
        raise IncompatibleClientError(
            f"the coordinator uses blocks of {params.block_coordinates} coordinates "
            f"for {format_codec(codec)}, this client {ours}; run matching versions"
        )
    return codec


class CoordinatorLink:
    """The client's connection to one coordinator; lives on the background loop."""

    def __init__(
        self,
        target: str,
        channel: grpc.aio.Channel,
        spec: ModelSpec,
        config: ClientConfig,
    ) -> None:
        self.target = target
        self.spec = spec
        self.config = config
        self._channel = channel
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        self.push_method = push_method(channel)
        self.credentials = Credentials("", b"")
        self.tracker = RoundTracker()
        self._session: SessionStream | None = None
        self._closed = False

    @classmethod
    async def connect(
        cls,
        target: str,
        spec: ModelSpec,
        settings: JoinSettings,
        config: ClientConfig,
    ) -> tuple[CoordinatorLink, Federation]:
        """Open a channel, Join (retrying while unreachable), open the Session.

        Raises:
            CoordinatorUnavailableError: unreachable for `connect_timeout_s`.
            IncompatibleClientError: inner_steps or codec do not fit.
            InvalidUpdateError: the model spec differs from the federation's.
        """
        link = cls(target, open_channel(target, config), spec, config)
        try:
            federation = await link._join(settings)
            link._session = SessionStream(
                link.stub, link.credentials, link.tracker, config.heartbeat_interval_s
            )
            link._session.start()
        except BaseException:
            await link.close("join failed")
            raise
        return link, federation

    async def _join(self, settings: JoinSettings) -> Federation:
        wanted = settings.compression
        request = coordinator_pb2.JoinRequest(
            client_name=self.config.name or default_client_name(),
            model_spec=spec_to_proto(self.spec),
            supported_codecs=list(WIRE_CODEC_TO_PROTO.values()),
            inner_steps=settings.inner_steps or 0,
            library_version=library_version(),
            requested_codec=(
                codec_params_to_proto(wanted, DEFAULT_CHUNK_BYTES) if wanted else None
            ),
        )

        async def attempt(timeout_s: float) -> coordinator_pb2.JoinResponse:
            return await self.stub.Join(request, timeout=timeout_s)

        response = await retry_unavailable(
            attempt,
            rpc="Join",
            target=self.target,
            connect_timeout_s=self.config.connect_timeout_s,
            attempt_timeout_s=self.config.rpc_timeout_s,
        )
        round_config = response.round_config
        chunk_bytes = round_config.chunk_bytes or DEFAULT_CHUNK_BYTES
        codec = announced_codec(round_config, chunk_bytes)
        self.credentials = Credentials(response.client_id, response.session_token)
        self.tracker.model_version = response.model_version
        return Federation(
            run_id=response.run_id,
            inner_steps=round_config.inner_steps,
            chunk_bytes=chunk_bytes,
            model_version=response.model_version,
            seed_model=response.seed_model,
            codec=codec,
            feedback_decay=round_config.codec_params.feedback_decay or 1.0,
        )

    def _transfer_timeout_s(self, nbytes: int, chunk_bytes: int) -> float:
        # `rpc_timeout_s` per chunk (ClientConfig's contract) plus one for set-up.
        chunks = math.ceil(nbytes / max(1, chunk_bytes))
        return self.config.rpc_timeout_s * (chunks + 1)

    def push_timeout_s(self, chunk_bytes: int) -> float:
        """Deadline of one model-sized push."""
        nbytes = self.spec.num_coordinates * FP32_BYTES
        return self._transfer_timeout_s(nbytes, chunk_bytes)

    def pull_timeout_s(self, wait_s: float, chunk_bytes: int) -> float:
        """Deadline of a pull that may wait `wait_s` for its version to exist."""
        return wait_s + self._transfer_timeout_s(self.spec.num_bytes, chunk_bytes)

    async def push(
        self, meta: UpdateMeta, flat: torch.Tensor, chunk_bytes: int
    ) -> PushResult:
        """Push one update (see `transfer.push_update` for what it raises)."""
        return await push_update(
            self.push_method,
            self.credentials,
            meta,
            flat,
            chunk_bytes,
            self.push_timeout_s(chunk_bytes),
        )

    async def push_compressed(
        self, updates: CompressedUpdates, meta: UpdateMeta, delta: torch.Tensor
    ) -> PushResult:
        """Push one update through the codec and error feedback of `updates`."""
        requests = updates.requests(self.credentials, meta, delta)
        timeout_s = self.push_timeout_s(updates.chunk_bytes)
        response = await stream_update(self.push_method, requests, timeout_s)
        return PushResult(
            response.round_id, response.updates_in_round, updates.payload_bytes
        )

    async def seed(self, flat: torch.Tensor, chunk_bytes: int) -> PushResult | None:
        """Upload the initial weights; None if another client seeded first."""
        meta = UpdateMeta(round_id=0, base_version=0, kind="initial_weights")
        try:
            return await self.push(meta, flat, chunk_bytes)
        except WrongRoundError as exc:
            log.info(
                "seed_lost_race", client=self.credentials.client_id, reason=str(exc)
            )
            return None

    async def pull(
        self, min_version: int, buffer: torch.Tensor, wait_s: float, chunk_bytes: int
    ) -> PulledModel:
        """Pull weights of at least `min_version`, waiting up to `wait_s` for them."""
        timeout_s = self.pull_timeout_s(wait_s, chunk_bytes)
        return await pull_model(
            self.stub, self.credentials, min_version, self.spec, timeout_s, buffer
        )

    async def close(self, reason: str) -> None:
        """Leave the session and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._session is not None:
                await self._session.close(reason)
        finally:
            await self._channel.close()
