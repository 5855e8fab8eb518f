"""The serving event loop: uvloop where installed, asyncio's own on request, a clear error when
uvloop is asked for and missing; both serve."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util

import grpc
import pytest
from edgecnn.protos import inference_pb2_grpc
from edgecnn.server import ServerThread, Settings, cmd_serve, event_loop
from edgecnn.server.event_loop import EventLoopUnavailable, loop_factory, loop_name, resolve

from tests.server.grpc_helpers import TIMEOUT, infer_request, logits_of

uvloop = pytest.importorskip("uvloop")


@pytest.fixture
def no_uvloop(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))


def test_auto_is_uvloop_where_installed_and_asyncio_where_not(no_uvloop):
    assert resolve("auto") == "asyncio"
    assert resolve("asyncio") == "asyncio"
    with pytest.raises(EventLoopUnavailable, match="uvloop is not installed"):
        resolve("uvloop")


def test_a_name_resolves_to_its_kind_of_loop():
    assert resolve("auto") == "uvloop"
    with pytest.raises(EventLoopUnavailable, match="expected one of auto, asyncio, uvloop"):
        resolve("trio")
    for name, kind in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = loop_factory(name)()
        try:
            assert isinstance(loop, kind) and (name == "asyncio") != isinstance(loop, uvloop.Loop)
        finally:
            loop.close()

    async def running() -> str:
        return loop_name(asyncio.get_running_loop())

    assert event_loop.run(running(), "uvloop") == "uvloop"
    assert event_loop.run(running(), "asyncio") == "asyncio"


def test_the_flag_reaches_the_settings_and_a_missing_uvloop_stops_the_start(tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    cmd_serve.configure(parser)
    assert cmd_serve.settings_from_args(parser.parse_args(["--repository", str(tmp_path)])).event_loop == "uvloop"
    assert cmd_serve.settings_from_args(parser.parse_args(["--repository", str(tmp_path), "--event-loop", "asyncio"])).event_loop == "asyncio"
    with pytest.raises(SystemExit):
        parser.parse_args(["--repository", str(tmp_path), "--event-loop", "trio"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    (tmp_path / "m").mkdir()
    assert cmd_serve.run(parser.parse_args(["--repository", str(tmp_path), "--port", "0", "--metrics-port", "-1", "--event-loop", "uvloop"])) == 2
    assert "--event-loop uvloop: uvloop is not installed" in capsys.readouterr().err
    assert cmd_serve.settings_from_args(parser.parse_args(["--repository", str(tmp_path)])).event_loop == "asyncio"


@pytest.mark.parametrize("name", ["asyncio", "uvloop"])
def test_each_loop_serves_model_infer(repository, samples, name, caplog):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu", event_loop=name)
    with caplog.at_level("INFO", logger="edgecnn.server.app"), ServerThread(settings) as server:
        assert f"event loop: {name}" in caplog.text
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            got = logits_of(stub.ModelInfer(infer_request("lenet5", samples["x"][:2]), timeout=TIMEOUT))
    assert got.shape == (2, 10)
