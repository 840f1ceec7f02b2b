"""`corral serve` on its embedded defaults (a SQLite file, the local libvirtd), driven over HTTP, curl and the
CLI: the seed manifest through the whole state machine on a real TCG guest with a real qemu-guest-agent."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.virt.driver import DomainNotFound, EventKind, HypervisorError
from app.virt.libvirt_driver import connect
from tests.conftest import IMAGE_DIR, conditions, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "crl_integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CORRAL = str(Path(sys.executable).parent / "corral")
INSTANCES = "/v1/namespaces/default/instances"


def phases_in(events: list[dict[str, Any]], name: str) -> list[str]:
    """The phases object `name` went through in a watch stream, repeats folded."""
    seen: list[str] = []
    for event in events:
        phase = event["object"]["status"].get("phase")
        if event["object"]["metadata"]["name"] == name and phase and (not seen or seen[-1] != phase):
            seen.append(phase)
    return seen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    def __init__(self, url: str, env: dict[str, str], data: Path) -> None:
        self.url, self.env, self.data = url, env, data
        self.client = httpx.Client(base_url=url, headers=AUTH, timeout=30)
        self.events: list[dict[str, Any]] = []
        self.timed_events: list[tuple[float, dict[str, Any]]] = []  # (arrival, event)

    def watch(self, path: str = INSTANCES) -> list[dict[str, Any]]:
        """Record every event of the collection at `path` from now on (a thread); instance events also go
        to self.events and self.timed_events. Returns the list the events are appended to."""
        started = threading.Event()
        events = self.events if path == INSTANCES else []

        def run() -> None:
            timeout = httpx.Timeout(30, read=None)
            with httpx.Client(base_url=self.url, headers=AUTH, timeout=timeout) as client:
                try:
                    with client.stream("GET", path, params={"watch": "true"}) as response:
                        started.set()
                        for line in response.iter_lines():
                            if line:
                                event = json.loads(line)
                                if path == INSTANCES:
                                    self.timed_events.append((time.monotonic(), event))
                                events.append(event)
                except httpx.HTTPError:
                    return  # the server stopped

        threading.Thread(target=run, daemon=True).start()
        assert started.wait(5)
        return events

    def phases_seen(self, name: str) -> list[str]:
        return phases_in(self.events, name)

    def get(self, name: str) -> dict[str, Any]:
        return self.client.get(f"{INSTANCES}/{name}").json()

    def wait(self, name: str, phase: str, agent: bool | None = None, timeout: float = 60) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            obj = self.get(name)
            if obj.get("status", {}).get("phase") != phase:
                return None
            if agent is not None and (conditions(obj).get("AgentConnected") == "True") != agent:
                return None
            return obj

        return wait_for(ready, timeout=timeout, interval=0.1, what=f"{name} {phase} (agent {agent})")

    def act(self, name: str, action: str) -> None:
        response = self.client.post(f"{INSTANCES}/{name}/{action}")
        assert response.status_code == 202, response.text


def launch(data: Path, uri: str, **settings: str) -> tuple[subprocess.Popen[bytes], Serve]:
    """`corral serve` on the embedded defaults (SQLite in `data`), plus CORRAL_* `settings`; returns once
    node local is Ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env |= {"CORRAL_DATA_DIR": str(data), "CORRAL_ADMIN_TOKEN": TOKEN, "CORRAL_HEARTBEAT_SECONDS": "2"}
    env |= {f"CORRAL_{k.upper()}": v for k, v in settings.items()}
    if uri != "qemu:///system":
        env["CORRAL_LIBVIRT_URI"] = uri  # qemu:///system is what `corral serve` picks by itself
    if "CORRAL_IMAGE_DIR" in os.environ:
        env["CORRAL_IMAGE_DIR"] = os.environ["CORRAL_IMAGE_DIR"]
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "serve.log"
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [CORRAL, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data
        )
    url = f"http://127.0.0.1:{port}"
    served = Serve(url, env | {"CORRAL_SERVER": url, "CORRAL_TOKEN": TOKEN}, data)
    try:
        wait_for(
            lambda: proc.poll() is None and answers_ready(url),
            timeout=60,
            interval=0.1,
            what="corral serve ready",
        )
        local = wait_for(
            lambda: (
                (n := served.client.get("/v1/nodes/local").json())["status"].get("phase") == "Ready" and n
            ),
            timeout=60,
            what="node local Ready",
        )
        assert local["spec"]["uri"] == uri
    except BaseException:
        stop(proc, served)
        raise AssertionError("corral serve did not come up:\n" + log_path.read_text()) from None
    return proc, served


def stop(proc: subprocess.Popen[bytes], served: Serve) -> None:
    served.client.close()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(params=["qemu:///system", "test:///default"], ids=["qemu", "test-driver"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Serve]:
    proc, served = launch(tmp_path / "data", request.param)
    try:
        yield served
        remove_all_instances(served)
    finally:
        stop(proc, served)
    assert (tmp_path / "data" / "corral.db").exists()


def remove_all_instances(served: Serve) -> None:
    """Guests outlive the control plane (as they should): delete what the test made before stopping it."""
    names = [i["metadata"]["name"] for i in served.client.get(INSTANCES).json()["items"]]
    for name in names:
        served.client.delete(f"{INSTANCES}/{name}")
    for name in names:
        wait_for(
            lambda n=name: served.client.get(f"{INSTANCES}/{n}").status_code == 404,
            timeout=60,
            what=f"cleanup of {name}",
        )


def answers_ready(url: str) -> bool:
    """Whether the Corral at `url` answers /readyz with 200."""
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def curl(*args: str) -> Any:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {TOKEN}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout) if out.stdout else None


def qemu_pid(domain: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text())


def test_seed_manifest_through_the_state_machine(serve: Serve) -> None:
    real = serve.client.get("/v1/nodes/local").json()["spec"]["uri"].startswith("qemu")
    local = serve.client.get("/v1/nodes/local").json()
    assert (
        local["status"]["virtType"] == "qemu"
    )  # TCG: this host's KVM is paravirtual; test driver: no guests
    serve.watch()
    created = curl(
        "-X",
        "POST",
        "-H",
        "Content-Type: application/yaml",
        "--data-binary",
        f"@{ROOT / 'examples' / 'vmi-guest-agent.yaml'}",
        f"{serve.url}{INSTANCES}",
    )
    assert created["metadata"]["name"] == "test-vmi"

    running = serve.wait("test-vmi", "Running", agent=True if real else None)

    def seen_phases() -> list[str]:
        return [phase for phase in serve.phases_seen("test-vmi") if phase != "Pending"]

    # A watch sees each write (a moment after a GET may); the pass that defines the domain and starts it
    # writes Scheduled into the history with Starting, not on its own.
    wait_for(lambda: "Running" in seen_phases(), timeout=5, what="Running on the watch stream")
    seen = seen_phases()
    assert seen[:3] == ["Scheduling", "Starting", "Running"], seen
    stamped = [s["phase"] for s in running["status"]["phaseTransitionTimestamps"]]
    assert stamped[:4] == ["Scheduling", "Scheduled", "Starting", "Running"], stamped
    domain, uid = running["status"]["domainName"], running["metadata"]["uid"]
    # The test driver lives inside the serve process; only the real libvirtd can be inspected from here.
    hv = connect("qemu:///system") if real else None
    if hv is not None:
        assert hv.lookup(domain).uuid == uid
        assert hv.agent_command(domain, {"execute": "guest-get-host-name"}, 5) == {"host-name": "test-vmi"}

    guest = serve.client.get(f"{INSTANCES}/test-vmi/guest")
    if real:  # what qemu-ga reports, with observedAt, in the guest view and in KubeVirt's status fields
        assert guest.status_code == 200, guest.text

        def identified() -> dict[str, Any] | None:
            """The report, once it says what the OS is: an agent that answers while its guest is still
            booting may leave sections out, and the worker asks again within seconds."""
            view: dict[str, Any] = serve.client.get(f"{INSTANCES}/test-vmi/guest").json()
            return view if view["osInfo"].get("id") else None

        view = wait_for(identified, timeout=30, what="the guest's OS in its agent report")
        assert view["osInfo"]["id"] == "debian" and view["hostname"]["hostname"] == "test-vmi"
        assert view["osInfo"]["observedAt"] and "guest-exec" in view["supportedCommands"]["items"]
        status = serve.get("test-vmi")["status"]
        assert status["guestOSInfo"]["prettyName"].startswith("Debian")
        assert conditions(serve.get("test-vmi"))["AgentVersionNotSupported"] == "False"
        # The NIC is on the node's NAT network: its DHCP lease shows in status.interfaces by itself.
        lease = wait_for(
            lambda: next(
                (i for i in serve.get("test-vmi")["status"].get("interfaces", []) if i.get("ipAddress")), None
            ),
            timeout=30,
            interval=0.2,
            what="a DHCP lease in status.interfaces",
        )
        assert (
            lease["name"] == "default"
            and lease["ipAddress"].startswith("10.88.")
            and "domain" in lease["infoSource"]
        )
        fresh = serve.client.get(f"{INSTANCES}/test-vmi/guest/interfaces", params={"refresh": "true"})
        assert fresh.status_code == 200 and fresh.json()["observedAt"] > view["observedAt"]
        eth0 = next(i for i in fresh.json()["items"] if i["name"] == "eth0")
        assert lease["ipAddress"] in [a["address"] for a in eth0["ipAddresses"]]  # the guest agrees
        assert eth0["mac"] == lease["mac"]
    else:  # the test driver runs no guest: no agent to ask
        assert guest.status_code == 409 and "AgentConnected=Unknown" in guest.json()["detail"]

    serve.act("test-vmi", "pause")
    assert serve.wait("test-vmi", "Paused")["status"]["reason"] == "PausedByUser"
    bad = serve.client.post(f"{INSTANCES}/test-vmi/softreboot")
    assert bad.status_code == 409 and "legal actions: unpause, stop, delete" in bad.json()["detail"]
    serve.act("test-vmi", "unpause")
    serve.wait("test-vmi", "Running")

    serve.act("test-vmi", "stop")  # graceful: ACPI or agent, within the 30 s grace period
    assert serve.wait("test-vmi", "Stopped")["status"]["reason"] == "StoppedByUser"
    stopped = serve.client.get(f"{INSTANCES}/test-vmi/guest/osinfo")
    assert stopped.status_code == 409 and "not connected" in stopped.json()["detail"]
    serve.act("test-vmi", "start")
    serve.wait("test-vmi", "Running", agent=True if real else None)

    count = len(serve.get("test-vmi")["status"]["phaseTransitionTimestamps"])
    serve.act("test-vmi", "restart")
    wait_for(
        lambda: len(serve.get("test-vmi")["status"]["phaseTransitionTimestamps"]) > count, what="restart"
    )
    serve.wait("test-vmi", "Running", agent=True if real else None)

    serve.act("test-vmi", "softreboot")  # the guest OS reboots (agent, else ACPI); QEMU stays
    if real:
        wait_for(
            lambda: conditions(serve.get("test-vmi"))["AgentConnected"] == "False",
            timeout=30,
            what="the agent went away for the reboot",
        )
    serve.wait("test-vmi", "Running", agent=True if real else None)

    if real:  # kill -9 of the QEMU process: runStrategy Always boots it again
        pid = qemu_pid(domain)
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: Path(f"/run/libvirt/qemu/{domain}.pid").exists() and qemu_pid(domain) != pid,
            timeout=30,
            what="a new QEMU process",
        )
        again = serve.wait("test-vmi", "Running", agent=True)
        restarted = [s["phase"] for s in again["status"]["phaseTransitionTimestamps"][-2:]]
        assert restarted == ["Starting", "Running"]

        # The guest powers itself off: runStrategy Always boots it again.
        count = len(again["status"]["phaseTransitionTimestamps"])
        assert hv is not None
        with contextlib.suppress(HypervisorError):  # qemu-ga powers off without answering
            hv.agent_command(domain, {"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}}, 5)
        wait_for(
            lambda: len(serve.get("test-vmi")["status"]["phaseTransitionTimestamps"]) > count,
            timeout=30,
            what="a restart after the guest powered off",
        )
        serve.wait("test-vmi", "Running", agent=True)

    listed = subprocess.run(
        [CORRAL, "get", "instances"], env=serve.env, capture_output=True, text=True, check=True
    )
    assert "test-vmi" in listed.stdout and "Running" in listed.stdout
    subprocess.run(
        [CORRAL, "delete", "instances", "test-vmi"], env=serve.env, check=True, capture_output=True
    )
    wait_for(
        lambda: serve.client.get(f"{INSTANCES}/test-vmi").status_code == 404, timeout=60, what="deletion"
    )
    # The watch is read by its own thread: its last event may land just after the GET saw the 404.
    wait_for(lambda: serve.events[-1]["type"] == "DELETED", timeout=5, what="the DELETED event on the watch")
    # A guest still shutting down shows Terminating; one already off when the pass looks again (the test
    # driver's always, a real one through its agent often) is gone in the pass that asked.
    assert serve.phases_seen("test-vmi")[-1] in ("Running", "Terminating")
    if hv is not None:
        with pytest.raises(DomainNotFound):
            hv.lookup(domain)
        assert not list(Path("/var/lib/corral/instances").glob(f"{uid}-*"))  # no overlay left behind
        hv.close()


def test_bad_requests_through_curl(serve: Serve) -> None:
    command = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Type: application/json",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "-d",
        "{",
        f"{serve.url}/v1/nodes",
    ]
    bad = subprocess.run(command, capture_output=True, text=True, check=False)
    assert bad.stdout == "400"
    assert httpx.get(f"{serve.url}/v1/nodes").status_code == 401


def test_a_killed_corral_restarts_and_converges(tmp_path: Path) -> None:
    """kill -9 of `corral serve` during a stop: the next process finishes the job and loses nothing."""
    data = tmp_path / "data"
    proc, served = launch(data, "qemu:///system")
    try:
        seed = (ROOT / "examples" / "vmi-guest-agent.yaml").read_bytes()
        created = served.client.post(INSTANCES, content=seed, headers={"Content-Type": "application/yaml"})
        assert created.status_code == 201
        served.wait("test-vmi", "Running", agent=True)
        served.act("test-vmi", "stop")
        proc.kill()  # SIGKILL: no cleanup, its leases left behind
        proc.wait()
        served.client.close()

        proc, served = launch(data, "qemu:///system")
        stopped = served.wait("test-vmi", "Stopped", timeout=60)
        assert stopped["status"]["reason"] == "StoppedByUser"
        served.act("test-vmi", "start")
        served.wait("test-vmi", "Running", agent=True)
        remove_all_instances(served)
    finally:
        stop(proc, served)


def test_guest_agent_on_a_real_guest(tmp_path: Path) -> None:
    """The real qemu-ga of the test guest: connect latency, info, exec, files, freeze/thaw, and its death."""
    proc, served = launch(tmp_path / "data", "qemu:///system")
    hv = connect("qemu:///system")
    agent_events: queue.Queue[tuple[float, str]] = queue.Queue()
    hv.subscribe(
        lambda e: agent_events.put((time.monotonic(), e.event)) if e.kind is EventKind.AGENT else None
    )
    try:
        served.watch()
        seed = (ROOT / "examples" / "vmi-guest-agent.yaml").read_bytes()
        served.client.post(INSTANCES, content=seed, headers={"Content-Type": "application/yaml"})
        served.wait("test-vmi", "Running", agent=True)
        connected_at = next(
            t for t, event in iter(lambda: agent_events.get(timeout=5), None) if event == "Connected"
        )

        # The watch stream may deliver the change a moment after a GET already shows it.
        def agent_shown(event: dict[str, Any]) -> bool:
            return conditions(event["object"]).get("AgentConnected") == "True"

        shown_at = wait_for(
            lambda: next((t for t, e in served.timed_events if agent_shown(e)), None),
            timeout=5,
            what="AgentConnected on the watch stream",
        )
        assert shown_at - connected_at < 1.0, (
            f"AgentConnected shown {shown_at - connected_at:.3f}s after libvirt"
        )

        base = f"{INSTANCES}/test-vmi/guest"
        kernel = (IMAGE_DIR / "corral" / "test-guest" / "latest" / "kernel-version").read_text().strip()
        ran = served.client.post(f"{base}/exec", json={"command": ["/bin/uname", "-r"]})
        assert ran.status_code == 200, ran.text
        assert ran.json()["stdout"].strip() == kernel and ran.json()["exitCode"] == 0
        piped = served.client.post(
            f"{base}/exec",
            json={"command": ["/bin/cat"], "stdinBase64": base64.b64encode(b"\x00\xffbinary").decode()},
        ).json()
        assert base64.b64decode(piped["stdoutBase64"]) == b"\x00\xffbinary"
        failed = served.client.post(
            f"{base}/exec", json={"command": ["/bin/sh", "-c", "echo oops >&2; exit 3"]}
        )
        assert failed.json()["exitCode"] == 3 and failed.json()["stderr"] == "oops\n"
        missing = served.client.post(f"{base}/exec", json={"command": ["/no/such/program"]})
        assert missing.status_code == 422 and "No such file" in missing.json()["detail"]
        slow = served.client.post(
            f"{base}/exec", json={"command": ["/bin/sleep", "300"], "timeoutSeconds": 1}
        )
        assert slow.json()["timedOut"] is True and slow.json()["killed"] is True, slow.text
        left = served.client.post(f"{base}/exec", json={"command": ["/bin/ps"]}).json()["stdout"]
        assert "sleep 300" not in left, left  # killed in the guest, not only given up on
        # `corral exec`: the program's streams and exit code are the command's own.
        cli_env = served.env | {"CORRAL_SERVER": served.url, "CORRAL_TOKEN": TOKEN}
        script = "echo out; echo err >&2; exit 3"
        done = subprocess.run(
            [CORRAL, "exec", "test-vmi", "--", "/bin/sh", "-c", script],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
        described = subprocess.run(
            [CORRAL, "describe", "vmi", "test-vmi"], env=cli_env, capture_output=True, text=True, check=True
        ).stdout
        operations = described.split("Guest operations:")[1].splitlines()
        assert operations[2].split()[:3] == ["exec", "Succeeded", "bootstrap-admin"], described
        assert operations[2].endswith(f"/bin/sh -c {script}")  # the newest first

        payload = os.urandom(200_000)
        wrote = served.client.post(
            f"{base}/file-write",
            json={"path": "/tmp/corral.bin", "contentBase64": base64.b64encode(payload).decode()},
        )
        assert wrote.status_code == 200 and wrote.json()["size"] == len(payload)
        read = served.client.post(f"{base}/file-read", json={"path": "/tmp/corral.bin"})
        assert base64.b64decode(read.json()["contentBase64"]) == payload
        small = served.client.post(f"{base}/file-read", json={"path": "/tmp/corral.bin", "maxBytes": 1000})
        assert small.status_code == 413
        absent = served.client.post(f"{base}/file-read", json={"path": "/nonexistent"})
        assert absent.status_code == 422

        frozen = served.client.post(f"{base}/freeze")
        assert frozen.status_code == 200 and frozen.json()["fsFreezeStatus"] == "frozen"
        assert served.get("test-vmi")["status"]["fsFreezeStatus"] == "frozen"
        thawed = served.client.post(f"{base}/thaw")
        assert thawed.json()["fsFreezeStatus"] == "thawed"

        record = served.client.get(f"{base}/operations").json()["items"]
        assert [r["kind"] for r in record][:3] == ["thaw", "freeze", "file-read"]
        assert all(r["requestedBy"] == "bootstrap-admin" for r in record)
        write_record = next(r for r in record if r["kind"] == "file-write")
        assert (
            "contentBase64" not in write_record["request"] and write_record["request"]["contentBase64Length"]
        )

        # qemu-ga dies in the guest: AgentConnected goes False and the guest endpoints answer 409 at once.
        before = time.monotonic()
        served.client.post(
            f"{base}/exec",
            json={"command": ["/bin/sh", "-c", "(sleep 0.3; killall qemu-ga) >/dev/null 2>&1 &"]},
        )

        def agent_lost() -> bool:
            return any(
                t > before and conditions(e["object"]).get("AgentConnected") == "False"
                for t, e in served.timed_events
            )

        wait_for(agent_lost, timeout=5, what="AgentConnected=False")
        started = time.monotonic()
        gone = served.client.get(base)
        assert gone.status_code == 409 and time.monotonic() - started < 1.0
        served.wait("test-vmi", "Running", agent=True)  # the guest's init restarts qemu-ga
        remove_all_instances(served)
    finally:
        hv.close()
        stop(proc, served)


def test_a_node_no_worker_reports_turns_ready_unknown(tmp_path: Path) -> None:
    proc, served = launch(tmp_path / "data", "test:///default")  # its worker reports node local
    stop(proc, served)
    # `corral api` alone on the same database: the node's last heartbeat only ages.
    port = free_port()
    env = served.env | {"CORRAL_NODE_GRACE_SECONDS": "2"}
    with (tmp_path / "data" / "api.log").open("a") as log:
        api = subprocess.Popen(
            [CORRAL, "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
            wait_for(lambda: answers_ready(url), timeout=30, what="corral api ready")

            def unknown() -> dict[str, Any] | None:
                node = client.get("/v1/nodes/local").json()
                return node if conditions(node)["Ready"] == "Unknown" else None

            node = wait_for(unknown, timeout=15, interval=0.2, what="Ready=Unknown")
            ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "NodeStatusUnknown" and "no worker has reported" in ready["message"]
            assert node["status"]["phase"] == "NotReady"
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(20)
    # A worker back on the node reports it Ready again.
    proc, served = launch(tmp_path / "data", "test:///default")
    stop(proc, served)
