"""The process testbed: `trimcache testbed up|status|down` for real, and the launcher's pieces.

The end-to-end test starts Redis, the origin (on the small test zoo), the controller and two edge
nodes as detached processes through the CLI, checks ``testbed.json`` and ``status``, stops them
with ``down`` and asserts that no recorded process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from testbed import launcher
from testbed.launcher import LinkProfile, Service, TestbedError
from testbed.topology import grid_topology
from tests.helpers import run_cli, wait_until


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _processes_under(directory: Path) -> list[int]:
    """Pids whose working directory is inside ``directory`` (every service runs in STATE_DIR)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == directory or directory in cwd.parents:
            found.append(int(entry.name))
    return found


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process group: a shell leader with a background grandchild."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"], start_new_session=True)
    yield proc
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


# --------------------------------------------------------------------------- pieces


def test_topology_places_edges_and_nearby_areas() -> None:
    topo = grid_topology(3)
    assert [s.node_id for s in topo.edges] == ["edge-1", "edge-2", "edge-3"]
    xs = [s.x_m for s in topo.edges]
    assert xs == sorted(xs) and xs[1] - xs[0] >= 200
    for site in topo.edges:
        area = topo.area_near(site.node_id)
        near = ((area.x_m - site.x_m) ** 2 + (area.y_m - site.y_m) ** 2) ** 0.5
        others = [
            ((area.x_m - o.x_m) ** 2 + (area.y_m - o.y_m) ** 2) ** 0.5
            for o in topo.edges
            if o is not site
        ]
        assert near < 100 < min(others)
    assert len({s.position for s in grid_topology(9).edges}) == 9
    with pytest.raises(ValueError):
        grid_topology(0)


def test_controller_topology_is_accepted_by_the_controller() -> None:
    from controller.topology import Topology

    doc = launcher.controller_topology(
        grid_topology(2),
        backhaul=LinkProfile(100.0, 30.0),
        radio=LinkProfile(400.0, 5.0),
    )
    topo = Topology.from_json(doc)
    assert set(topo.areas) == {"area-1", "area-2"}
    assert topo.positions["edge-2"] == (400.0, 0.0)
    assert topo.channel.backhaul_bps == 100e6
    assert topo.channel.latency_ms == 5.0


def test_a_worlds_channel_reaches_the_controller() -> None:
    from controller.topology import Topology
    from core.world import World
    from testbed.world import build_world, layout_of

    world = World.from_json(build_world(grid_topology(2)))
    doc = launcher.controller_topology(
        layout_of(world),
        backhaul=LinkProfile(100.0, 30.0),
        radio=LinkProfile(None, world.radio_latency_ms),
        channel=world.doc["channel"],
    )
    topo = Topology.from_json(doc)
    assert topo.channel.bandwidth_hz == 20e6  # the delay model's downlink, not the default
    assert topo.channel.coverage_m == world.doc["channel"]["coverage_m"]


def test_stop_services_kills_the_whole_group(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    service = Service(
        "sleeper", "edge", "http://x", sleeper.pid, launcher._create_time(sleeper.pid),
        tmp_path / "log", sleeper,
    )  # fmt: skip
    assert launcher.process_alive(sleeper.pid, service.create_time)
    assert launcher.stop_services([service], grace_s=5) == ["sleeper"]
    assert sleeper.poll() is not None
    assert not launcher._group_alive(sleeper.pid)


def test_a_recycled_pid_is_never_signalled(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    started = launcher._create_time(sleeper.pid)
    assert started is not None
    earlier = started - 10 * launcher.START_TIME_SLACK_S
    impostor = Service("old", "edge", "http://x", sleeper.pid, earlier, tmp_path / "log")
    assert launcher.stop_services([impostor], grace_s=1) == []
    assert sleeper.poll() is None


def test_a_clock_step_does_not_disown_a_service(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """psutil's start time moves by a whole second when the wall clock is stepped (it is boot
    time, in whole seconds, plus ticks): the service recorded before the step is still ours."""
    started = launcher._create_time(sleeper.pid)
    assert started is not None
    recorded = Service("sleeper", "edge", "http://x", sleeper.pid, started - 1.0, tmp_path / "log")
    assert launcher.stop_services([recorded], grace_s=5) == ["sleeper"]
    assert sleeper.poll() is not None


def test_status_and_down_without_a_testbed(tmp_path: Path) -> None:
    result = run_cli("testbed", "status", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert "no testbed" in result.stdout
    result = run_cli("testbed", "down", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr


def test_stale_state_is_cleaned(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = {
        "schema": launcher.SCHEMA,
        "services": [
            Service(
                "origin", "origin", "http://127.0.0.1:9", dead.pid, None, tmp_path / "o.log"
            ).to_json()
        ],
    }
    launcher.state_path(tmp_path).write_text(json.dumps(state))
    statuses = launcher.status(tmp_path)
    assert [(s.name, s.running, s.healthy) for s in statuses] == [("origin", False, False)]
    assert launcher.down(tmp_path) == []
    assert not launcher.state_path(tmp_path).exists()


def test_failed_start_names_the_service_and_stops_the_rest(tmp_path: Path) -> None:
    zoo = tmp_path / "broken-zoo"
    zoo.mkdir()
    (zoo / "zoo.json").write_text("{}")  # "built", but no repos/: the origin refuses to start
    state_dir = tmp_path / "state"
    result = run_cli(
        "testbed", "up", "--dir", str(state_dir), "--zoo", str(zoo), "--edges", "1",
        "--profile", "test", "--timeout-s", "60", "--controller-port", "0",
    )  # fmt: skip
    assert result.returncode == 1
    assert "origin" in result.stderr and "repos/" in result.stderr, result.stderr
    assert not launcher.state_path(state_dir).exists()
    # Redis had started first (its log exists): it must be gone too.
    assert (state_dir / "logs" / "redis.log").is_file()
    assert _processes_under(state_dir) == []


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_up_status_down_leaves_no_process(tmp_path: Path, zoo_dir: Path) -> None:
    state_dir = tmp_path / "tb"
    result = run_cli(
        "testbed", "up", "--dir", str(state_dir), "--edges", "2", "--zoo", str(zoo_dir),
        "--profile", "test", "--capacity-mb", "256", "--timeout-s", "120", "--controller-port", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    state = json.loads((state_dir / "testbed.json").read_text())
    pids: dict[str, int] = state["pids"]
    try:
        assert set(state) >= {
            "controller_url", "origin_url", "edge_urls", "redis_url", "auth_token", "zoo_dir",
            "pids",
        }  # fmt: skip
        assert len(state["edge_urls"]) == 2
        assert set(pids) == {"redis", "origin", "controller", "edge-1", "edge-2"}
        assert state["zoo_dir"] == str(zoo_dir)
        assert state["redis_url"].startswith("redis://127.0.0.1:")
        for url in [state["controller_url"], state["origin_url"], *state["edge_urls"]]:
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        for path in state["logs"].values():
            assert Path(path).is_file()
        assert set(pids.values()) <= set(_processes_under(state_dir))
        assert (state_dir / "redis" / "appendonlydir").is_dir()  # AOF persistence is on

        status = run_cli("testbed", "status", "--dir", str(state_dir))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" up ") == 5

        again = run_cli("testbed", "up", "--dir", str(state_dir), "--edges", "2")
        assert again.returncode == 0
        assert "already running" in again.stderr
        assert json.loads((state_dir / "testbed.json").read_text())["pids"] == pids

        # Both edge nodes registered with the controller (heartbeats).
        def registered() -> bool:
            body = httpx.get(f"{state['controller_url']}/v1/nodes", timeout=5).json()
            text = json.dumps(body)
            return "edge-1" in text and "edge-2" in text

        wait_until(registered, timeout_s=30)
    finally:
        stopped = run_cli("testbed", "down", "--dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_gone(pid) for pid in pids.values()):
        time.sleep(0.1)
    alive = [name for name, pid in pids.items() if not _gone(pid)]
    assert alive == []
    assert _processes_under(state_dir) == []
    assert not (state_dir / "testbed.json").exists()
    status = run_cli("testbed", "status", "--dir", str(state_dir))
    assert status.returncode == 1


@pytest.mark.slow
def test_up_with_two_controller_replicas(tmp_path: Path, zoo_dir: Path) -> None:
    state_dir = tmp_path / "tb"
    result = run_cli(
        "testbed", "up", "--dir", str(state_dir), "--edges", "1", "--controllers", "2",
        "--zoo", str(zoo_dir), "--profile", "test", "--capacity-mb", "256", "--timeout-s", "120",
        "--controller-port", "0",
    )  # fmt: skip
    state = json.loads((state_dir / "testbed.json").read_text()) if result.returncode == 0 else {}
    try:
        assert result.returncode == 0, result.stderr
        urls = state["controller_urls"]
        assert len(urls) == 2 and urls[0] == state["controller_url"]
        assert set(state["pids"]) == {"redis", "origin", "controller", "controller-2", "edge-1"}
        assert f"export TRIMCACHE_CONTROLLER_URL={','.join(urls)}" in result.stdout
        views = [httpx.get(f"{url}/v1/planner", timeout=5).json() for url in urls]
        assert [v["replica_id"] for v in views] == ["controller", "controller-2"]
        assert views[0]["leader"] == views[1]["leader"] is not None  # one leader, seen by both
        assert sum(v["leading"] for v in views) == 1
        # The edge registered through the replicas: both list it.
        for url in urls:
            nodes = json.dumps(httpx.get(f"{url}/v1/nodes", timeout=5).json())
            assert "edge-1" in nodes
        status = run_cli("testbed", "status", "--dir", str(state_dir), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        doc = json.loads(status.stdout)
        assert set(doc["controllers"]) == set(urls)
        assert [s["name"] for s in doc["services"] if s["kind"] == "controller"] == [
            "controller",
            "controller-2",
        ]
    finally:
        stopped = run_cli("testbed", "down", "--dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert "controller-2" in stopped.stdout
    wait_until(lambda: _processes_under(state_dir) == [], timeout_s=30, what="every process gone")


def test_up_rejects_a_partly_running_testbed(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    alive = Service(
        "origin", "origin", "http://127.0.0.1:9", sleeper.pid,
        launcher._create_time(sleeper.pid), tmp_path / "o.log",
    )  # fmt: skip
    dead = Service("redis", "redis", "redis://127.0.0.1:9/0", 2**22 + 7, None, tmp_path / "r.log")
    state = {"schema": launcher.SCHEMA, "services": [alive.to_json(), dead.to_json()]}
    launcher.state_path(tmp_path).write_text(json.dumps(state))
    with pytest.raises(TestbedError, match="partly running"):
        launcher.up(launcher.LaunchOptions(state_dir=tmp_path, profile="test"))
    assert sleeper.poll() is None


def test_service_waves_follow_depends_on() -> None:
    from testbed.services import Deployment, service_table, waves

    table = service_table(
        Deployment(
            auth_token="t", zoo_dir="/zoo", redis_dir="/r", edge_data_dirs=["/a", "/b"],
            hf_home="/hf", manifest_cache_dir="/m", topology=grid_topology(2),
            backhaul=LinkProfile(None, 0.0), radio=LinkProfile(None, 0.0),
            capacity_bytes=1 << 20, edge_ports=[9001, 9002],
        )
    )  # fmt: skip
    names = [[spec.name for spec in wave] for wave in waves(table)]
    assert names == [["redis", "origin"], ["controller"], ["edge-1", "edge-2"]]
    edge = table[-1]
    assert edge.env["EDGE_CONTROLLER_URL"] == "http://127.0.0.1:8080"
    assert "EDGE_LINK_RATE_BYTES_PER_S" not in edge.env  # unshaped radio
    assert edge.writes == ("/b",)
    with pytest.raises(ValueError, match="cycle"):
        waves([replace(table[0], depends_on=("origin",)), replace(table[1], depends_on=("redis",))])


def test_controller_replicas_in_the_service_table() -> None:
    from testbed.services import Deployment, service_table, waves

    table = service_table(
        Deployment(
            auth_token="t", zoo_dir="/zoo", redis_dir="/r", edge_data_dirs=["/a"],
            hf_home="/hf", manifest_cache_dir="/m", topology=grid_topology(1),
            backhaul=LinkProfile(None, 0.0), radio=LinkProfile(None, 0.0),
            capacity_bytes=1 << 20, edge_ports=[9001], replica_ports=[9081, 9082],
        )
    )  # fmt: skip
    names = [[spec.name for spec in wave] for wave in waves(table)]
    assert names == [
        ["redis", "origin"],
        ["controller", "controller-2", "controller-3"],
        ["edge-1"],
    ]
    controllers = [spec for spec in table if spec.kind == "controller"]
    assert [c.env["CONTROLLER_PORT"] for c in controllers] == ["8080", "9081", "9082"]
    assert [c.env["CONTROLLER_REPLICA_ID"] for c in controllers] == [c.name for c in controllers]
    assert {c.env["CONTROLLER_REDIS_URL"] for c in controllers} == {"redis://127.0.0.1:6379/0"}
    assert table[-1].env["EDGE_CONTROLLER_URL"] == (
        "http://127.0.0.1:8080,http://127.0.0.1:9081,http://127.0.0.1:9082"
    )


def test_the_objective_and_its_solver_reach_the_controller() -> None:
    from testbed.services import Deployment, service_table

    def controller_env(**extra: str) -> dict[str, str]:
        table = service_table(
            Deployment(
                auth_token="t", zoo_dir="/zoo", redis_dir="/r", edge_data_dirs=["/a"],
                hf_home="/hf", manifest_cache_dir="/m", topology=grid_topology(1),
                backhaul=LinkProfile(None, 0.0), radio=LinkProfile(None, 0.0),
                capacity_bytes=1 << 20, edge_ports=[9001], **extra,  # type: ignore[arg-type]
            )
        )  # fmt: skip
        return dict(next(s for s in table if s.name == "controller").env)

    delay = controller_env(objective="delay", solver="marl", marl_checkpoint="/ck.pt")
    assert delay["CONTROLLER_OBJECTIVE"] == "delay"
    assert delay["CONTROLLER_DELAY_SOLVER"] == "marl" and "CONTROLLER_SOLVER" not in delay
    assert delay["CONTROLLER_MARL_CHECKPOINT"] == "/ck.pt"
    plain = controller_env(solver="popularity")
    assert plain["CONTROLLER_SOLVER"] == "popularity" and "CONTROLLER_OBJECTIVE" not in plain
    doc = launcher.controller_topology(
        grid_topology(1), backhaul=LinkProfile(100.0, 30.0), radio=LinkProfile(400.0, 5.0)
    )
    assert doc["channel"]["origin_bps"] == 100e6


def test_up_refuses_marl_without_its_checkpoint(tmp_path: Path) -> None:
    args = ("testbed", "up", "--dir", str(tmp_path), "--objective", "delay", "--solver", "marl")
    for extra in ((), ("--marl-checkpoint", str(tmp_path / "missing.pt"))):
        result = run_cli(*args, *extra, timeout_s=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "marl-checkpoint" in lines[0], result.stderr
    assert not (tmp_path / "testbed.json").exists()


def test_zoo_files_are_world_readable(zoo_dir: Path, tmp_path: Path) -> None:
    """save_pretrained writes 0600; an origin of another user (the image's) must read the zoo."""
    from testbed.zoo import make_world_readable

    for path in zoo_dir.rglob("*"):
        assert path.stat().st_mode & 0o005 == (0o005 if path.is_dir() else 0o004), path
    secret = tmp_path / "repo" / "model.safetensors"
    secret.parent.mkdir(mode=0o700)
    secret.write_bytes(b"x")
    secret.chmod(0o600)
    make_world_readable(tmp_path / "repo")
    assert secret.stat().st_mode & 0o777 == 0o644
    assert secret.parent.stat().st_mode & 0o777 == 0o755
