"""Is this update the client's, for this round? Header signatures, bindings, hashes.

Before a PushUpdate is admitted, its header's signature must verify under
the key the client proved at Join (over the coordinator's own run id and
codec, and the round, nonce and base the header claims), and those claims
must be the open round's: its nonce (so an update signed for an earlier
round or run is refused) and the SHA-256 of its base weights. The
`UpdateVerifier` built here then checks every chunk and the commit
(`wire.assemble`).

Payload hashing is the one heavy step: BLAKE3 (the default, `update_hash`)
of a 1 MiB chunk takes 0.26-0.41 ms of CPU here, SHA-256 0.67-0.87 ms. It
runs on the event loop's own thread, right before the chunk is checked and
staged (`payload_digest`). Hashing on a thread pool instead (what this did
before) cost more CPU than the hash itself saved in wall time: in the same
run of bench/signing.py (25M coordinates, 15 rounds, 2 shared cores) the
pool's coordinator spent 2.02 ms of CPU per MB against 1.71 inline (1.46
unsigned), for a hand-off per chunk (future, queue, eventfd wake-up, GIL
hand-back) and a payload read cold on the other core's cache by the
finiteness check and the copy into the stage. Both hashes release the GIL,
so gRPC's threads keep receiving while a chunk is hashed. Each update is
hashed with the algorithm its header names and its signature binds, which
must be the one Join negotiated with its client (`ClientRecord.hash_name`):
a client cannot make the coordinator hash with another (nor, on a run with
`update_hash = "sha256"`, with BLAKE3). The base model digest it signs is
under that hash too, the one its pulls carried (`rounds.model_digests`).
"""

from __future__ import annotations

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.model_digests import ModelDigests
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.crypto.signing import HASH_LABELS, UpdateVerifier
from fedgrpc.domain.requests import HashName, UpdateHeaderInfo
from fedgrpc.errors import BadSignatureError, InvalidUpdateError, WrongRoundError
from fedgrpc.wire.codec_params import (
    DENSE_FP32_BINDING,
    codec_binding,
)
from fedgrpc.wire.signed import update_statement


class UpdateAuthenticator:
    """Verifies update headers and hashes payloads; one per coordinator."""

    def __init__(self, config: CoordinatorConfig, run_id: str, engine: RoundEngine):
        self.required = config.update_signatures == "required"
        self.chunk_signatures = config.chunk_signatures_required
        self.update_hash = config.update_hash
        self.run_id = run_id
        self.engine = engine
        self._binding = codec_binding(config.codec_config)

    def verifier(
        self, client: ClientRecord, header: UpdateHeaderInfo
    ) -> UpdateVerifier | None:
        """The header's signature checked; the chain checker for its chunks.

        None when the coordinator runs with `update_signatures = "off"`.

        Raises:
            BadSignatureError: unsigned, or the signature does not verify.
            WrongRoundError: signed for another instance of the round (nonce)
                or for other base weights than the round's (or their digest
                under another hash than the client's model digests).
            InvalidUpdateError: another hash than Join agreed on.
        """
        if not self.required:
            return None
        self._check_hash(client, header)
        key = client.public_key
        if not header.signature or key is None:
            raise BadSignatureError(
                "the update header carries no signature, but this coordinator "
                "requires signed updates (RoundConfig.update_signatures_required); "
                "upgrade the client"
            )
        binding = DENSE_FP32_BINDING if header.is_initial_weights else None
        statement = update_statement(header, self.run_id, binding or self._binding)
        verifier = UpdateVerifier(
            key, statement, header.signature, self.chunk_signatures
        )
        self._check_binding(header, client.model_hash_name or header.hash_name)
        return verifier

    def _check_hash(self, client: ClientRecord, header: UpdateHeaderInfo) -> None:
        """The header's hash is the one Join negotiated with `client`.

        A client negotiates once (`update_hash_for`); any other hash is
        refused, so no client can make the coordinator hash payloads or look
        up model digests under a hash it did not agree to (a run held to
        SHA-256 never hashes with BLAKE3, an all-BLAKE3 run never with
        SHA-256). A record that did not Join here (None) keeps the run's rule.
        """
        agreed = client.hash_name
        if agreed is None:
            agreed = "sha256" if self.update_hash == "sha256" else header.hash_name
        if header.hash_name != agreed:
            raise InvalidUpdateError(
                f"the update from {header.client_id} hashes with "
                f"{HASH_LABELS[header.hash_name]}, but Join agreed on "
                f"{HASH_LABELS[agreed]} with this client (RoundConfig.update_hash; "
                f'this coordinator runs with update_hash = "{self.update_hash}"): '
                f"hash with {HASH_LABELS[agreed]}, or join again"
            )

    def _check_binding(self, header: UpdateHeaderInfo, model_hash: HashName) -> None:
        """The header names this round's nonce and base weights.

        The base digest is under `model_hash`, the hash of the model digests
        its client pulls (`ClientRecord.model_hash_name`): the update's own
        for current clients, SHA-256 for one from before model digests were
        negotiated even when its chain is BLAKE3.

        Called after the round engine accepted the header's round and base
        version (`RoundEngine.check_header`), so the open round is its round.
        """
        engine, nonce, base = self.engine, self.engine.seed_nonce, b""
        if not header.is_initial_weights:
            current = engine.current
            if current is None:  # check_header would have refused it
                raise WrongRoundError("no round is collecting updates")
            nonce = current.nonce
            digests: ModelDigests | None = current.base_digests
            if header.base_version != current.base_version:
                # An update spanning rounds its client sat out (accepted by
                # check_header): it signs the older version it was based on.
                digests = engine.participation.base_digests.get(header.base_version)
            base = self._base_digest(model_hash, digests)
        if header.round_nonce != nonce:
            raise WrongRoundError(
                f"the update for round {header.round_id} was signed with another "
                "round nonce than this coordinator announced: it was replayed from "
                "an earlier run, or the client missed RoundStarted; pull the latest "
                "model and push in the next round"
            )
        if header.base_model_sha256 != base:
            raise WrongRoundError(
                f"the update was computed from weights whose "
                f"{HASH_LABELS[model_hash]} digest is not that of model "
                f"version {header.base_version} (or it signed a digest under "
                "another hash than its own): pull the model again"
            )

    def _base_digest(self, name: HashName, digests: ModelDigests | None) -> bytes:
        """The base version's digest under hash `name` (b"": unknown).

        The current version's is computed if missing (once: a restart
        republished it before its clients pulled again); an older version's
        bytes are gone, so a digest nobody needed then is unknown now.
        """
        if digests is None:
            return b""
        known = digests.get(name)
        published = self.engine.model.published
        if known is None and published is not None and published.digests is digests:
            known = published.digest(name)
        return known or b""

    @staticmethod
    def payload_digest(
        payload: bytes | memoryview, verifier: UpdateVerifier | None
    ) -> bytes | None:
        """A chunk payload's digest under `verifier`'s hash; None with signatures off.

        Computed on the caller's thread (module docstring: a thread pool
        cost more CPU than it saved).
        """
        return None if verifier is None else verifier.hash(payload)
