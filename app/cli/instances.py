"""The commands on instances and what moves them: power actions, exec, console, ssh, claim, migrate, drain,
and uploads into DataVolumes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from app.cli.connection import Api, Failure, connection_options, problem_text
from app.cli.progress import console, transfer, waiting
from app.cli.resources import dump, wait_for_phase

# action: the phases that mean it is done (for --wait)
ACTIONS = {
    "start": ("Running",),
    "stop": ("Stopped", "Scheduled"),  # an instance that never ran stays Scheduled
    "pause": ("Paused",),
    "unpause": ("Running",),
    "restart": ("Running",),
    "softreboot": ("Running",),
}
ESCAPE = b"\x1d"  # Ctrl-], as with virsh console and telnet
CLAIM_POLL_SECONDS = 2  # each claim attempt waits this long on the server; Ctrl-C waits for at most one


def action_command(action: str) -> click.Command:
    @click.argument("names", nargs=-1, required=True)
    @click.option("--wait", is_flag=True, help=f"return once each instance is {' or '.join(ACTIONS[action])}")
    @click.option("--timeout", type=float, default=300, show_default=True, help="seconds --wait waits")
    @connection_options
    def act(api: Api, names: tuple[str, ...], wait: bool, timeout: float, **options: Any) -> None:
        body = {k: v for k, v in options.items() if v not in (None, False)}
        for name in names:
            path = api.path("instances", name)
            api.call("POST", f"{path}/{action}", json=body or None)
            if wait:
                reached = wait_for_phase(api, path, ACTIONS[action], timeout, f"instances/{name}")
                click.echo(f"instances/{name} {reached['phase']}")
            else:
                click.echo(f"instances/{name} {action} requested")

    if action == "stop":
        act = click.option("--force", is_flag=True, help="power off at once, without a guest shutdown")(act)
        act = click.option(
            "--grace-period",
            "gracePeriodSeconds",
            type=click.IntRange(min=0),
            help="seconds before power-off",
        )(act)
    text = {
        "start": "Start stopped instances.",
        "stop": "Stop instances: a guest shutdown, powered off after the grace period.",
        "pause": "Pause instances' vCPUs.",
        "unpause": "Resume paused instances.",
        "restart": "Power-cycle instances.",
        "softreboot": "Reboot instances' guests (ACPI or the guest agent).",
    }[action]
    return click.command(action, help=text)(act)


ACTION_COMMANDS = tuple(action_command(action) for action in ACTIONS)


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--stdin", "send_stdin", is_flag=True, help="send this command's standard input to the program")
@click.option("--timeout", type=click.IntRange(1, 3600), help="seconds before the program is killed")
@connection_options
def exec_(api: Api, name: str, command: tuple[str, ...], send_stdin: bool, timeout: int | None) -> None:
    """Run a program in the guest (through its agent) and exit with its exit code.

    Put the program after --, e.g. `corral exec web -- uname -a`. A program killed by a signal exits
    128 + the signal, one that timed out 124 (as timeout(1)).
    """
    body: dict[str, Any] = {"command": list(command)}
    if send_stdin:
        body["stdinBase64"] = base64.b64encode(sys.stdin.buffer.read()).decode()
    if timeout is not None:
        body["timeoutSeconds"] = timeout
    result = api.call("POST", api.path("instances", name) + "/guest/exec", json=body)
    for stream, out in (("stdout", sys.stdout.buffer), ("stderr", sys.stderr.buffer)):
        encoded = result.get(f"{stream}Base64")
        out.write(
            base64.b64decode(encoded) if encoded is not None else str(result.get(stream) or "").encode()
        )
        out.flush()
        if result.get(f"{stream}Truncated"):
            click.echo(f"corral: the guest's {stream} was cut short", err=True)
    if result.get("timedOut"):
        click.echo(f"corral: timed out after {timeout}s and killed", err=True)
        raise SystemExit(124)
    if result.get("exitCode") is None:
        raise SystemExit(128 + int(result.get("signal") or 9))
    raise SystemExit(int(result["exitCode"]))


@click.command()
@click.argument("pool")
@click.option("--name", help="the claimed instance's new name")
@click.option("-l", "--label", "labels", multiple=True, help="k=v for the claimed instance (repeatable)")
@click.option("--wait", type=click.FloatRange(0, 3600), default=0, help="seconds to wait for a ready member")
@click.option(
    "-o", "--output", type=click.Choice(("name", "json", "yaml")), help="print the claimed instance"
)
@connection_options
def claim(
    api: Api, pool: str, name: str | None, labels: tuple[str, ...], wait: float, output: str | None
) -> None:
    """Claim a warm instance from a pool: it leaves the pool running and is yours.

    With --wait, the pool's members are shown while none is ready. Ctrl-C lets the claim in flight finish
    and says whether it took a member, so nothing is claimed unseen.
    """
    malformed = [item for item in labels if "=" not in item]
    if malformed:
        raise click.BadParameter(f"{malformed[0]!r}: expected k=v", param_hint="-l/--label")
    body = {"labels": dict(item.split("=", 1) for item in labels)} | ({"name": name} if name else {})
    claimed = _claim(api, pool, body, wait)
    if output is None:
        click.echo(f"instances/{claimed['metadata']['name']} claimed from pools/{pool}")
    elif output == "name":
        click.echo(f"instances/{claimed['metadata']['name']}")
    else:
        dump(claimed, output)


def _claim(api: Api, pool: str, body: dict[str, Any], wait: float) -> dict[str, Any]:
    path = api.path("pools", pool) + "/claim"
    deadline = time.monotonic() + wait
    outcome: dict[str, Any] = {}

    def attempt(seconds: float) -> None:
        try:
            outcome["answer"] = api.send("POST", path, json=body, params={"waitSeconds": seconds})
        except Failure as exc:
            outcome["failure"] = exc

    with waiting(f"claiming from pools/{pool}") as status:
        while True:
            outcome.clear()
            seconds = max(0.0, min(CLAIM_POLL_SECONDS, deadline - time.monotonic()))
            # The request runs on its own thread: a Ctrl-C here waits for its answer instead of abandoning a
            # claim the server may already have made.
            request = threading.Thread(target=attempt, args=(seconds,), daemon=True)
            request.start()
            try:
                while request.is_alive():
                    request.join(0.1)
            except KeyboardInterrupt:
                status.update(f"interrupted: waiting for the claim in flight on pools/{pool} to answer")
                request.join()
                outcome["interrupted"] = True
                break
            if "failure" in outcome:
                raise outcome["failure"]
            answer = outcome["answer"]
            if answer.status_code == 201:
                return dict(answer.json())
            if answer.status_code != 503 or time.monotonic() >= deadline:
                raise Failure(problem_text(answer))
            counts = (api.call("GET", api.path("pools", pool)).get("status")) or {}
            left = deadline - time.monotonic()
            available, warming = counts.get("availableReplicas", 0), counts.get("warming", 0)
            status.update(
                f"waiting for a ready member of pools/{pool}: {available} available, {warming} warming; "
                f"{left:.0f}s left"
            )
    _report_interrupted(outcome, pool)  # once the live line is gone
    raise SystemExit(130)


def _report_interrupted(outcome: dict[str, Any], pool: str) -> None:
    answer = outcome.get("answer")
    if answer is not None and answer.status_code == 201:
        click.echo(
            f"instances/{answer.json()['metadata']['name']} claimed from pools/{pool} (then interrupted)"
        )
    else:
        click.echo(f"interrupted: nothing claimed from pools/{pool}", err=True)


@click.command()
@click.argument("name")
@click.option("--target-node", help="the node to move to (default: chosen by Corral)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the migration to its end")
@connection_options
def migrate(api: Api, name: str, target_node: str | None, wait: bool) -> None:
    """Live-migrate an instance, showing the copy as it goes (memory, dirty rate, iteration) and the
    downtime at the end. Ctrl-C stops following; the migration goes on (cancel-migration stops it)."""
    body = {"targetNode": target_node} if target_node else {}
    created = api.call("POST", api.path("instances", name) + "/migrate", json=body)
    migration = created["metadata"]["name"]
    click.echo(f"migrations/{migration} created for instances/{name}")
    if not wait:
        return
    try:
        final = _follow_migration(api, migration)
    except KeyboardInterrupt:
        click.echo(
            f"stopped following migrations/{migration}; it goes on (corral cancel-migration {name})", err=True
        )
        raise
    state = final.get("migrationState") or {}
    if final.get("phase") != "Succeeded":
        reason = state.get("failureReason") or final.get("message") or final.get("reason") or "failed"
        raise Failure(f"migrations/{migration} {final.get('phase')}: {reason}")
    elapsed = (state.get("elapsedMs") or 0) / 1000
    downtime = state.get("downtimeMs")
    click.echo(
        f"instances/{name} migrated to {state.get('targetNode')} in {elapsed:.1f}s"
        + (f", downtime {downtime} ms" if downtime is not None else "")
        + (f", {state['iteration']} iterations" if state.get("iteration") else "")
    )


def _follow_migration(api: Api, migration: str) -> dict[str, Any]:
    path = api.path("migrations", migration)
    with transfer() as bars:
        task = bars.add_task("migrating", total=None, detail="Pending")
        while True:
            status = (api.call("GET", path).get("status")) or {}
            state = status.get("migrationState") or {}
            phase = status.get("phase", "Pending")
            detail = [phase]
            if state.get("iteration"):
                detail.append(f"iteration {state['iteration']}")
            if state.get("memoryDirtyRateBytesPerSecond"):
                detail.append(f"dirty {state['memoryDirtyRateBytesPerSecond'] / (1 << 20):.1f} MiB/s")
            # Done is what no longer needs sending: zero pages are never sent, so bytes sent undercount.
            total, remaining = state.get("dataTotalBytes"), state.get("dataRemainingBytes")
            if phase == "Succeeded":
                remaining = 0
            done = total - remaining if total is not None and remaining is not None else None
            bars.update(
                task,
                total=total,
                completed=done if done is not None else state.get("dataProcessedBytes") or 0,
                detail=", ".join(detail),
            )
            if phase in ("Succeeded", "Failed"):
                return dict(status)
            time.sleep(0.5)


@click.command("cancel-migration")
@click.argument("name")
@connection_options
def cancel_migration(api: Api, name: str) -> None:
    """Abort an instance's unfinished live migration (the guest stays where it was)."""
    migrations = api.list_all("migrations", {})["items"]
    unfinished = [
        m
        for m in migrations
        if (m.get("spec") or {}).get("vmiName") == name
        and (m.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    if not unfinished:
        raise Failure(f"instances/{name} has no unfinished migration")
    for m in unfinished:
        api.call("POST", api.path("migrations", m["metadata"]["name"]) + "/cancel")
        click.echo(f"migrations/{m['metadata']['name']} cancel requested")


@click.command()
@click.argument("node")
@click.option("--cancel", is_flag=True, help="abort the drain's unfinished migrations")
@connection_options
def drain(api: Api, node: str, cancel: bool) -> None:
    """Live-migrate everything off a node (admin); the node takes no new instances meanwhile."""
    path = f"/v1/nodes/{node}/drain"
    answer = api.call("DELETE" if cancel else "POST", path)
    for m in answer["migrations"]:
        click.echo(f"{m['namespace']}/{m['vmiName']}: migrations/{m['name']} {m.get('phase') or ''}".rstrip())
    for refused in answer["notMigratable"]:
        click.echo(f"{refused['namespace']}/{refused['name']}: not migrated: {refused['reason']}")


@click.command()
@click.argument("resource", type=click.Choice(("dv", "datavolume", "datavolumes")))
@click.argument("name")
@click.option(
    "--file", "source", required=True, type=click.Path(dir_okay=False), help="a qcow2 or raw disk image"
)
@click.option("--size", help="create the DataVolume with this size (e.g. 10Gi) if it does not exist")
@click.option("--timeout", type=float, default=300, show_default=True, help="seconds to wait for UploadReady")
@connection_options
def upload(api: Api, resource: str, name: str, source: str, size: str | None, timeout: float) -> None:
    """Stream a disk image into an upload DataVolume (created with --size when it does not exist)."""
    del resource  # only DataVolumes take uploads
    disk = Path(source)
    if not disk.is_file():
        raise Failure(f"no file {source!r}")
    path = api.path("datavolumes", name)
    if api.send("GET", path).status_code == 404:
        if not size:
            raise Failure(f"no DataVolume {name!r}; give --size to create it")
        spec = {"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": size}}}}
        api.call("POST", api.path("datavolumes"), json={"metadata": {"name": name}, "spec": spec})
    wait_for_phase(api, path, ("UploadReady",), timeout, f"datavolumes/{name}")
    with transfer() as bars:
        task = bars.add_task(f"uploading {disk.name}", total=disk.stat().st_size, detail="")

        def chunks() -> Iterator[bytes]:
            with disk.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    bars.advance(task, len(chunk))
                    yield chunk

        done = api.call("PUT", path + "/upload", content=chunks(), timeout=None)
    click.echo(f"datavolumes/{name} {done['status']['phase']} ({done['status'].get('capacity')} bytes)")


@click.command("console")
@click.argument("name")
@click.option("--force", is_flag=True, help="take the console over from another client")
@connection_options
def console_(api: Api, name: str, force: bool) -> None:
    """The guest's serial console in this terminal (raw), until Ctrl-] or the guest's end."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    url = api.server.replace("http", "ws", 1) + api.path("instances", name) + "/console"
    url += "?force=true" if force else ""
    try:
        socket = connect(url, additional_headers={"Authorization": f"Bearer {api.token or ''}"})
    except InvalidStatus as exc:
        detail = exc.response.body.decode(errors="replace") if exc.response.body else ""
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("detail", detail)
        raise Failure(f"{exc.response.status_code} {detail}") from None
    except OSError as exc:
        raise Failure(f"cannot reach the Corral API at {api.server} ({exc})") from None
    console().print(f"connected to {name}'s console; Ctrl-] leaves")
    restore = _raw_terminal()
    done = threading.Event()

    def from_guest() -> None:
        try:
            for frame in socket:
                sys.stdout.buffer.write(frame if isinstance(frame, bytes) else frame.encode())
                sys.stdout.buffer.flush()
        except ConnectionClosed:
            pass
        done.set()

    threading.Thread(target=from_guest, daemon=True).start()
    try:
        while not done.is_set():
            data = os.read(sys.stdin.fileno(), 1024)
            if not data or ESCAPE in data:
                before = data.split(ESCAPE)[0]
                if before:
                    socket.send(before)
                break
            socket.send(data)
    except ConnectionClosed:
        pass
    finally:
        restore()
        socket.close()
    console().print("\r\n[console closed]", markup=False)


def _raw_terminal() -> Any:
    """Put a terminal stdin in raw mode (keys go to the guest as typed); returns what restores it."""
    if not sys.stdin.isatty():
        return lambda: None
    import termios
    import tty

    saved = termios.tcgetattr(sys.stdin.fileno())
    tty.setraw(sys.stdin.fileno())
    return lambda: termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


@click.command()
@click.argument("name")
@click.option("-l", "--user", default=lambda: os.environ.get("USER", "root"), help="the guest user")
@click.option("-i", "--identity", type=click.Path(dir_okay=False), help="private key file")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@connection_options
def ssh(api: Api, name: str, user: str, identity: str | None, command: tuple[str, ...]) -> None:
    """ssh to the guest's first reported address (status.interfaces)."""
    obj = api.call("GET", api.path("instances", name))
    addresses = [nic.get("ipAddress") for nic in (obj.get("status") or {}).get("interfaces", [])]
    address = next((a for a in addresses if a), None)
    if address is None:
        raise Failure(f"instance {name!r} reports no address yet (status.interfaces)")
    key = ["-i", identity] if identity else []
    os.execvp("ssh", ["ssh", *key, f"{user}@{address}", *command])  # becomes ssh
