"""tracejudge.testing.SidecarProcess, which every end-to-end test starts tracejudge with."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tracejudge.testing import SidecarProcess


@pytest.mark.parametrize("port", ["grpc_port", "http_port", "admin_port"])
def test_a_port_taken_before_the_sidecar_binds_it_means_a_start_on_fresh_ports(tmp_path: Path, port: str):
    sidecar = SidecarProcess(tmp_path / "tj", [])
    taken = getattr(sidecar, port)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        sidecar.start()
        try:
            assert getattr(sidecar, port) != taken
            assert sidecar.metrics().names  # serving, on the new ports
        finally:
            sidecar.stop()


def test_a_sidecar_that_cannot_start_for_another_reason_is_not_retried(tmp_path: Path):
    sidecar = SidecarProcess(tmp_path / "tj", [], {"scorers": [{"name": "x", "builtin": "NoSuchCheck"}]})
    with pytest.raises(RuntimeError, match="NoSuchCheck"):
        sidecar.start()
    assert sidecar.log().count("unknown builtin 'NoSuchCheck'") == 1  # started once
