"""A coordinator (or client) that lies is caught; refused messages change nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedgrpc.errors import BadSignatureError, InvalidUpdateError, WrongRoundError
from fedgrpc.secagg import (
    AbortReason,
    ClientPhase,
    ConsistencyCheckError,
    ConsistencySignature,
    InconsistentSharesError,
    KeyDirectory,
    MaskedInput,
    PeerSignatureError,
    ProtocolViolationError,
    ServerPhase,
    SurvivorList,
    TamperedShareError,
    UnmaskRequest,
)
from fedgrpc.secagg.consistency import client_message
from fedgrpc.secagg.shamir import PRIME, Share
from tests.unit.secagg._federation import (
    Federation,
    identity,
    make_setup,
    random_codes,
    sparse_positions,
)

N = 8  # complete graph: k = 7, 8 holders, t = 5 (one corrupt client assumed)


@pytest.fixture
def masked() -> Federation:
    """A round of 8 where every client has sent its masked input (U3 closed)."""
    setup = make_setup(N)
    positions = sparse_positions(10_000, 0.1)
    federation = Federation(setup, positions)
    federation.share_keys(federation.advertise())
    senders = federation.deliver_shares()
    codes = random_codes(setup.participants, positions.size, 8)
    survivors = federation.mask(codes, senders)
    assert survivors.survivors == setup.participants
    return federation


def _announced(federation: Federation) -> SurvivorList:
    survivors = federation.server.survivor_list
    assert survivors is not None
    return survivors


def _request(client: str, survivors, signatures) -> UnmaskRequest:
    return UnmaskRequest(client, tuple(survivors), tuple(signatures))


def test_forked_survivor_lists_are_caught_before_any_reveal(masked) -> None:
    # The coordinator tells group A that the victim dropped (to collect shares
    # of its mask key) and group B that it survived (to collect its self-mask
    # seed shares). A corrupt client signs both lists.
    ids = masked.setup.participants
    victim, corrupt = ids[7], ids[3]
    list_a, list_b = tuple(c for c in ids if c != victim), ids
    shown = dict.fromkeys(ids[:3], list_a) | dict.fromkeys(ids[4:], list_b)
    confirmations = [
        masked.clients[c].sign_survivors(SurvivorList(lst)) for c, lst in shown.items()
    ]
    for lst in (list_a, list_b):
        forged = masked.keys[corrupt].sign(client_message(masked.setup, lst))
        confirmations.append(ConsistencySignature(corrupt, forged))

    for client, lst in shown.items():
        relayed = [s for s in confirmations if s.client != client]
        with pytest.raises(ConsistencyCheckError, match="different survivor lists"):
            masked.clients[client].unmask(_request(client, lst, relayed))

    assert all(masked.clients[c].phase is ClientPhase.ABORTED for c in shown)


def test_the_valid_half_of_a_fork_is_too_few_confirmations(masked) -> None:
    # Relaying only the signatures that do verify leaves group A (3 honest
    # clients plus the corrupt one: 4) short of t = 5.
    ids = masked.setup.participants
    victim, corrupt = ids[7], ids[3]
    list_a = tuple(c for c in ids if c != victim)
    group_a = ids[:3]
    confirmations = [
        masked.clients[c].sign_survivors(SurvivorList(list_a)) for c in group_a
    ]
    forged = masked.keys[corrupt].sign(client_message(masked.setup, list_a))
    confirmations.append(ConsistencySignature(corrupt, forged))
    client = group_a[0]
    relayed = [s for s in confirmations if s.client != client]

    with pytest.raises(ConsistencyCheckError, match="only 4 clients") as caught:
        masked.clients[client].unmask(_request(client, list_a, relayed))

    assert caught.value.reason is AbortReason.INCONSISTENT_SURVIVORS


def test_unmask_request_with_another_list_than_the_signed_one_is_refused(masked):
    ids = masked.setup.participants
    client = masked.clients[ids[0]]
    client.sign_survivors(SurvivorList(ids))

    with pytest.raises(ConsistencyCheckError, match="other than the one I signed"):
        client.unmask(_request(ids[0], ids[:-1], []))

    assert client.phase is ClientPhase.ABORTED


def test_a_client_signs_one_survivor_list_per_round(masked) -> None:
    ids = masked.setup.participants
    client = masked.clients[ids[0]]

    first = client.sign_survivors(SurvivorList(ids))
    again = client.sign_survivors(SurvivorList(ids))
    with pytest.raises(ConsistencyCheckError, match="second, different"):
        client.sign_survivors(SurvivorList(ids[:-1]))

    assert first == again


def test_each_peer_gets_exactly_one_kind_of_share_and_only_once(masked) -> None:
    # A consistent list that calls the last client dropped: its mask key is
    # revealed, never its self-mask seed, so its input stays hidden.
    ids = masked.setup.participants
    survivors = SurvivorList(ids[:-1])
    confirmations = [masked.clients[c].sign_survivors(survivors) for c in ids[:-1]]
    request = _request(ids[0], ids[:-1], confirmations[1:])

    response = masked.clients[ids[0]].unmask(request)
    with pytest.raises(ProtocolViolationError, match="phase done"):
        masked.clients[ids[0]].unmask(request)

    assert {owner for owner, _ in response.mask_key_shares} == {ids[-1]}
    assert {owner for owner, _ in response.self_seed_shares} == set(ids[:-1])


def test_keys_swapped_by_the_coordinator_are_refused() -> None:
    setup = make_setup(5)
    federation = Federation(setup, sparse_positions(100, 0.5))
    directory = federation.advertise()
    intruder = Federation(setup, sparse_positions(100, 0.5), seed=99)
    victim = setup.participants[2]
    swapped = intruder.clients[victim].advertise()  # other keys, other identity
    forged = KeyDirectory(
        tuple(swapped if a.client == victim else a for a in directory.advertisements)
    )
    client = federation.clients[setup.participants[0]]

    with pytest.raises(PeerSignatureError, match=f"round keys of {victim}"):
        client.share_keys(forged)

    assert client.phase is ClientPhase.ABORTED


def test_a_tampered_share_envelope_is_rejected() -> None:
    setup = make_setup(5)
    federation = Federation(setup, sparse_positions(100, 0.5))
    federation.share_keys(federation.advertise())
    client = setup.participants[1]
    inbox = federation.server.share_inbox(client)
    first = inbox.sealed[0]
    envelope = bytearray(first.envelope)
    envelope[40] ^= 0x01
    bad = dataclasses.replace(first, envelope=bytes(envelope))
    tampered = dataclasses.replace(inbox, sealed=(bad, *inbox.sealed[1:]))

    with pytest.raises(TamperedShareError) as caught:
        federation.clients[client].receive_shares(tampered)

    assert caught.value.reason is AbortReason.TAMPERED_SHARE
    assert federation.clients[client].phase is ClientPhase.ABORTED


def test_survivor_list_must_carry_the_coordinator_signature_when_known() -> None:
    setup = make_setup(5)
    positions = sparse_positions(100, 0.5)
    federation = Federation(setup, positions, coordinator_key=identity(500))
    federation.share_keys(federation.advertise())
    senders = federation.deliver_shares()
    signed = federation.mask(random_codes(senders, positions.size, 8), senders)
    stripped = SurvivorList(signed.survivors)
    first, second = (federation.clients[c] for c in setup.participants[:2])

    with pytest.raises(ConsistencyCheckError, match="not signed by the coordinator"):
        first.sign_survivors(stripped)
    assert second.sign_survivors(signed).client == setup.participants[1]
    assert signed.server_signature is not None


def test_refused_messages_leave_the_coordinator_state_unchanged() -> None:
    setup = make_setup(5)
    ids = setup.participants
    federation = Federation(setup, sparse_positions(100, 0.5))
    server, clients = federation.server, federation.clients
    adverts = {c: clients[c].advertise() for c in ids}
    server.receive_advertisement(adverts[ids[0]])

    with pytest.raises(WrongRoundError, match="not expected"):
        server.receive_advertisement(adverts[ids[0]])
    with pytest.raises(WrongRoundError, match="not expected"):
        server.receive_advertisement(dataclasses.replace(adverts[ids[1]], client="x"))
    with pytest.raises(BadSignatureError):
        server.receive_advertisement(
            dataclasses.replace(adverts[ids[1]], mask_key=adverts[ids[2]].mask_key)
        )
    with pytest.raises(WrongRoundError, match="phase advertise"):
        server.receive_masked_input(MaskedInput(ids[0], setup.ring().zeros(50)))
    for c in ids[1:]:
        server.receive_advertisement(adverts[c])

    directory = server.close_advertise()
    assert server.phase is ServerPhase.SHARE_KEYS
    assert directory.advertisements == tuple(adverts[c] for c in ids)


def test_malformed_masked_input_is_invalid_and_not_summed() -> None:
    setup = make_setup(5)
    ids, ring = setup.participants, setup.ring()
    positions = sparse_positions(1_000, 0.1)
    codes = random_codes(ids, positions.size, 8)
    federation = Federation(setup, positions)
    federation.share_keys(federation.advertise())
    federation.deliver_shares()
    server = federation.server

    with pytest.raises(InvalidUpdateError, match="masked values"):
        server.receive_masked_input(MaskedInput(ids[0], ring.zeros(positions.size + 1)))
    with pytest.raises(InvalidUpdateError, match="dtype"):
        server.receive_masked_input(
            MaskedInput(ids[0], np.zeros(positions.size, np.int64))
        )
    result = federation.finish(codes)

    expected = np.sum([codes[c].astype(np.int64) for c in ids], axis=0)
    assert np.array_equal(result.total, expected)


def test_a_reveal_of_the_wrong_kind_is_refused_by_the_coordinator(masked) -> None:
    ids = masked.setup.participants
    confirmed = masked.confirm(_announced(masked))
    response = masked.clients[confirmed[0]].unmask(
        masked.server.unmask_request(confirmed[0])
    )
    owner, share = response.self_seed_shares[0]
    # All survived, so a mask-key share of anyone is the forbidden kind.
    both = dataclasses.replace(response, mask_key_shares=((owner, share),))

    with pytest.raises(InvalidUpdateError, match="wrong owners"):
        masked.server.receive_unmask_response(both)

    # The refusal changed nothing: the honest responses still recover the sum.
    masked.server.receive_unmask_response(response)
    for c in confirmed[1:]:
        request = masked.server.unmask_request(c)
        masked.server.receive_unmask_response(masked.clients[c].unmask(request))
    assert masked.server.recover().survivors == ids


def test_a_wrong_share_from_a_holder_fails_recovery(masked) -> None:
    confirmed = masked.confirm(_announced(masked))
    liar = confirmed[0]
    for c in confirmed:
        response = masked.clients[c].unmask(masked.server.unmask_request(c))
        if c == liar:
            (owner, share), *rest = response.self_seed_shares
            wrong = Share(share.x, (share.y + 1) % PRIME)
            response = dataclasses.replace(
                response, self_seed_shares=((owner, wrong), *rest)
            )
        masked.server.receive_unmask_response(response)

    with pytest.raises(InconsistentSharesError, match="does not lie") as caught:
        masked.server.recover()

    assert caught.value.reason is AbortReason.INCONSISTENT_SHARES
    assert masked.server.phase is ServerPhase.ABORTED
