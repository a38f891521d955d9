"""Everything the client holds on the gRPC side, behind async methods.

`CoordinatorLink` owns the channel, the stub, the credentials, the Session
task and its `RoundTracker`, and the client's signing key. It is created and
used only on the client's background loop; the training thread reaches it
exclusively through `boundary.Connection`, so it never touches a grpc object.
A reconnect is a new link (`Connection.rejoin`).

A round mode (secure aggregation) is not built in: the caller's `Attach`
hook, called after Join and before the Session starts, may return a
`SessionEvents` handler for the events the link does not handle itself,
which sends its replies through `send_event`.

Join is challenge-response: GetJoinChallenge, check the coordinator's key
(`join`, `identity`), then Join with the signed Join statement. Updates are signed
when the coordinator requires it (or when they are exported for audit), and
every pulled model must carry the coordinator's signature.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import torch

from fedgrpc._proto.v1 import coordinator_pb2, coordinator_pb2_grpc
from fedgrpc.client.connection.channel import (
    Credentials,
    open_channel,
    retry_unavailable,
)
from fedgrpc.client.connection.join import (
    ClientIdentity,
    Federation,
    JoinSettings,
    explain_refusal,
    federation_from,
    join_request,
    load_client_identity,
    pinned_fingerprint,
    signed_join,
)
from fedgrpc.client.connection.pull import (
    ModelReceiver,
    ModelTrust,
    PulledModel,
    pull_model,
)
from fedgrpc.client.connection.push import (
    FP32_BYTES,
    PushResult,
    Signing,
    UpdateEncoder,
    UpdateMeta,
    push_method,
    push_result,
    stream_update,
    update_requests,
)
from fedgrpc.client.connection.round_tracker import RoundTracker
from fedgrpc.client.connection.session import SessionEvents, SessionStream
from fedgrpc.compress import CodecConfig
from fedgrpc.config import ClientConfig
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import UnknownClientError, WrongRoundError
from fedgrpc.log import get_logger
from fedgrpc.wire.codec_params import DENSE_FP32_BINDING, codec_binding
from fedgrpc.wire.export import ExportContext, export_path, exported

log = get_logger(__name__)
Attach = Callable[["CoordinatorLink", Federation], SessionEvents | None]
"""Called once per link after Join, before its Session starts: the handler of
the events a round mode adds (secure aggregation), or None."""


@dataclass(frozen=True, slots=True)
class Resume:
    """What a reconnecting client keeps from its previous link.

    The same identity key (so the coordinator finds its record, id and
    credit), and the coordinator's key seen before, now pinned: a coordinator
    that comes back must be the same one.
    """

    identity: ClientIdentity
    coordinator_key: PublicKey


class CoordinatorLink:
    """The client's connection to one coordinator; lives on the background loop."""

    def __init__(
        self,
        target: str,
        channel: grpc.aio.Channel,
        spec: ModelSpec,
        config: ClientConfig,
        resume: Resume | None = None,
        identity: ClientIdentity | None = None,
    ) -> None:
        self.target = target
        self.spec = spec
        self.config = config
        self._channel = channel
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        self.push_method = push_method(channel)
        given = resume.identity if resume else identity
        self.identity = given or load_client_identity(config)
        self._pinned = pinned_fingerprint(config)
        if resume is not None:
            self._pinned = resume.coordinator_key.fingerprint
        self._connect_timeout_s = config.connect_timeout_s if resume is None else 0.0
        self.credentials = Credentials("", b"")
        self.federation: Federation | None = None
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
        resume: Resume | None = None,
        attach: Attach | None = None,
        identity: ClientIdentity | None = None,
    ) -> tuple[CoordinatorLink, Federation]:
        """Open a channel, Join (retrying while unreachable), open the Session.

        With `resume` (a reconnect) Join is tried once: the caller runs the
        backoff schedule (`channel.Backoff`). `attach` (see `Attach`) gives
        the Session its round mode's handler before it starts, so the first
        event is not missed. `identity`: the key to join with (a sharded
        client's, the same at every shard); None loads `config`'s.

        Raises:
            CoordinatorUnavailableError: unreachable for `connect_timeout_s`.
            UnknownClientError: the coordinator does not admit this key.
            UntrustedCoordinatorError: its key is not the pinned one.
            IncompatibleClientError: inner_steps or codec do not fit.
            InvalidUpdateError: the model spec differs from the federation's.
            ConfigError: an identity_key or coordinator_key file is unusable.
        """
        channel = open_channel(target, config)
        link = cls(target, channel, spec, config, resume, identity)
        try:
            federation = await link._join(settings)
            link._session = SessionStream(
                link.stub,
                link.credentials,
                link.tracker,
                heartbeat_period_s(config, federation),
                deadline_mode=federation.round_mode == "deadline",
            )
            if attach is not None:
                link._session.events = attach(link, federation)
            link._session.start()
        except BaseException:
            await link.close("join failed")
            raise
        return link, federation

    async def _join(self, settings: JoinSettings) -> Federation:
        request = join_request(self.config, self.spec, settings)

        async def attempt(
            timeout_s: float,
        ) -> tuple[PublicKey, coordinator_pb2.JoinResponse]:
            return await signed_join(
                self.stub, request, self.identity, self._pinned, self.target, timeout_s
            )

        try:
            coordinator, response = await retry_unavailable(
                attempt,
                rpc="Join",
                target=self.target,
                connect_timeout_s=self._connect_timeout_s,
                attempt_timeout_s=self.config.rpc_timeout_s,
            )
        except UnknownClientError as exc:
            raise explain_refusal(exc, self.identity) from exc
        federation = federation_from(response, coordinator, self.spec)
        if federation.model_spec is not None:
            self.spec = federation.model_spec  # pull and re-join in its dtypes
        self.credentials = Credentials(response.client_id, response.session_token)
        self.tracker.model_version = response.model_version
        self.tracker.run_finished = response.run_finished
        self.federation = federation
        return federation

    def _require_federation(self) -> Federation:
        if self.federation is None:
            raise RuntimeError("CoordinatorLink used before a successful Join")
        return self.federation

    def send_event(self, request: coordinator_pb2.SessionRequest) -> None:
        """Queue a round mode's event (a SecAgg reply) on the Session stream."""
        if self._session is None:
            raise RuntimeError("CoordinatorLink.send_event before the Session opened")
        self._session.send(request)

    def resume_state(self) -> Resume:
        """What a reconnect after this link keeps: our key, the coordinator's."""
        return Resume(self.identity, self._require_federation().coordinator_key)

    def signing(self, binding_codec: CodecConfig | None) -> Signing | None:
        """How to sign an update of `binding_codec` (None: raw float32), if at all.

        Updates are signed when the coordinator requires it, and always when
        they are exported (an audit file without signatures proves nothing).
        """
        federation = self._require_federation()
        if not (federation.signed or self.config.export_updates_dir):
            return None
        binding = DENSE_FP32_BINDING
        if binding_codec is not None:
            binding = codec_binding(binding_codec)
        return Signing(
            self.identity.key,
            federation.run_id,
            binding,
            federation.update_hash,
            sign_chunks=not federation.chunk_signatures_optional,
        )

    def _export(
        self,
        requests: AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes],
        meta: UpdateMeta,
        signing: Signing | None,
    ) -> AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes]:
        """`requests`, also written to the export directory if configured."""
        directory = self.config.export_updates_dir
        if not directory or signing is None:
            return requests
        client_id = self.credentials.client_id
        path = export_path(directory, signing.run_id, meta.round_id, client_id)
        context = ExportContext(signing.run_id, signing.key.public_key, signing.binding)
        log.info("update_exported", round=meta.round_id, path=str(path))
        return exported(requests, path, context)

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
        """Push one raw float32 update (see `transfer.stream_update` for errors)."""
        signing = self.signing(None)
        requests = update_requests(self.credentials, meta, flat, chunk_bytes, signing)
        timeout_s = self.push_timeout_s(chunk_bytes)
        response = await stream_update(
            self.push_method, self._export(requests, meta, signing), timeout_s
        )
        return push_result(response, flat.numel() * FP32_BYTES)

    async def push_compressed(
        self, updates: UpdateEncoder, meta: UpdateMeta, delta: torch.Tensor
    ) -> PushResult:
        """Push one update through `updates` (a codec with error feedback)."""
        signing = self.signing(updates.config)
        requests = updates.requests(self.credentials, meta, delta, signing)
        timeout_s = self.push_timeout_s(updates.chunk_bytes)
        response = await stream_update(
            self.push_method, self._export(requests, meta, signing), timeout_s
        )
        return push_result(response, updates.payload_bytes)

    async def seed(
        self, flat: torch.Tensor, chunk_bytes: int, shard: tuple[int, int] = (0, 0)
    ) -> PushResult | None:
        """Upload the initial weights; None if another client seeded first.

        `shard` (index, count): `flat` is that shard's range only.
        """
        meta = UpdateMeta(
            round_id=0,
            base_version=0,
            kind="initial_weights",
            round_nonce=self._require_federation().round_nonce,
            shard=shard,
        )
        try:
            return await self.push(meta, flat, chunk_bytes)
        except WrongRoundError as exc:
            log.info(
                "seed_lost_race", client=self.credentials.client_id, reason=str(exc)
            )
            return None

    async def pull(
        self,
        min_version: int,
        buffer: torch.Tensor,
        wait_s: float,
        chunk_bytes: int,
        byte_range: tuple[int, int] | None = None,
        held_version: int | None = None,
    ) -> PulledModel:
        """Pull weights of at least `min_version`, waiting up to `wait_s` for them.

        `byte_range`: only those bytes; `held_version`: the version `buffer`
        holds, from which compressed steps may come (see `pull.pull_model`).
        """
        federation = self._require_federation()
        trust = ModelTrust(
            federation.coordinator_key, federation.run_id, self.config.hashes
        )
        timeout_s = self.pull_timeout_s(wait_s, chunk_bytes)
        receiver = ModelReceiver(self.spec, buffer, trust, byte_range, held_version)
        receiver.range_digest = bool(federation.shard_peers)  # a shard's own range
        return await pull_model(
            self.stub, self.credentials, min_version, timeout_s, receiver
        )

    async def close(self, reason: str, *, final: bool = False) -> None:
        """Leave the session and close the channel. Idempotent.

        `final`: the client is done for good (see `Session.close`).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._session is not None:
                await self._session.close(reason, final=final)
        finally:
            await self._channel.close()


def heartbeat_period_s(config: ClientConfig, federation: Federation) -> float:
    """Our heartbeat period: ours, or the coordinator's if that is shorter.

    The coordinator evicts a client silent for its session timeout, which
    it sizes from its own heartbeat interval; a client on a slower default
    (5 s) would be evicted by a coordinator that expects 1 s.
    """
    announced = federation.heartbeat_interval_s
    if announced <= 0:
        return config.heartbeat_interval_s
    return min(config.heartbeat_interval_s, announced)
