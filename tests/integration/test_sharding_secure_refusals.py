"""Shards that disagree on secure aggregation are refused by the client at Join.

A federation whose shard 0 masks its rounds and whose shard 1 does not
would sum one range under masks and send the other in the clear: the
client compares every shard's Join and refuses the map before it pushes
anything, naming both settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.errors import IncompatibleClientError
from tests.helpers.scripted import FAST
from tests.helpers.secure_shards import IN, OUT, SECURE, init_model
from tests.helpers.shards import running_shards, shard_configs


def test_a_client_refuses_shards_that_disagree_on_secure_aggregation(
    tmp_path: Path,
) -> None:
    secure = shard_configs(tmp_path, 2, init_model=str(init_model(tmp_path)),
                           min_clients=3, **SECURE)  # fmt: skip
    plain = dataclasses.replace(secure[1], secure_aggregation=False)
    with running_shards([secure[0], plain]) as shards:
        with pytest.raises(IncompatibleClientError) as refused:
            DiLoCoClient(shards[0].address, nn.Linear(IN, OUT), config=FAST)
        assert "(secure_aggregation False)" in str(refused.value)
        assert "(secure_aggregation True)" in str(refused.value)
        assert "must be started with the same" in str(refused.value)
        versions = [s.running.runtime.engine.model.version for s in shards]
        assert versions == [0, 0]  # nothing was pushed anywhere
