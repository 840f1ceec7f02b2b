"""The `corral` command: the server (serve, api, worker, db-upgrade, openapi) and a small client (apply, get,
delete, claim, migrate, drain)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from app import __version__
from app.config import Settings, get_settings

log = logging.getLogger("corral")
PLURALS = {
    "VirtualMachineInstance": "instances",
    "VirtualMachinePool": "pools",
    "VirtualMachineInstanceMigration": "migrations",
    "Node": "nodes",
    "DataVolume": "datavolumes",
    "Secret": "secrets",
    "Network": "networks",
}
CLUSTER_SCOPED = {"nodes", "devices", "networks"}
ALIASES = {
    "instance": "instances",
    "vmi": "instances",
    "vmis": "instances",
    "pool": "pools",
    "node": "nodes",
    "migration": "migrations",
    "device": "devices",
    "datavolume": "datavolumes",
    "dv": "datavolumes",
    "dvs": "datavolumes",
    "secret": "secrets",
    "network": "networks",
    "net": "networks",
}


def _database(settings: Settings) -> Any:
    from app import migrate
    from app.db import Database

    url = settings.resolved_database_url()
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.auto_migrate:
        migrate.upgrade(url)
    return Database(url)


def _bootstrap_token(db: Any, settings: Settings) -> None:
    from app.services.auth import bootstrap_admin

    with db.transaction() as session:
        minted = bootstrap_admin(session, settings.admin_token)
    if minted:
        path = settings.data_dir / "admin-token"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(minted + "\n")
        log.warning(
            "no CORRAL_ADMIN_TOKEN set: minted an admin token, stored in %s (mode 0600)", path.resolve()
        )


def _serve_http(db: Any, host: str, port: int) -> None:
    import uvicorn

    from app.api.deps import NodeAccess
    from app.main import create_app
    from app.virt.libvirt_driver import connect

    settings = get_settings()
    access = NodeAccess(connect, settings.data_dir / "uploads", settings.max_disk_bytes)
    # Watches stream until the client leaves: bound the wait for them at shutdown.
    uvicorn.run(
        create_app(db, settings.node_grace_seconds, settings.metrics_tenant_labels, access),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def _run_worker(db: Any, settings: Settings) -> Any:
    from app.worker.main import build_worker, register_local_node

    register_local_node(db, settings)
    process = build_worker(db, settings)
    process.start()
    return process


def cmd_serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    db = _database(settings)
    _bootstrap_token(db, settings)
    process = _run_worker(db, settings)
    try:
        _serve_http(db, args.host, args.port)
    finally:
        process.stop()
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    settings = get_settings()
    db = _database(settings)
    _bootstrap_token(db, settings)
    _serve_http(db, args.host, args.port)
    return 0


def cmd_worker(_: argparse.Namespace) -> int:
    settings = get_settings()
    db = _database(settings)
    process = _run_worker(db, settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    process.stop()
    return 0


def openapi_document() -> str:
    from app.db import Database
    from app.main import create_app

    document = create_app(Database("sqlite://")).openapi()
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def cmd_openapi(args: argparse.Namespace) -> int:
    if args.output:
        Path(args.output).write_text(openapi_document())
    else:
        sys.stdout.write(openapi_document())
    return 0


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    from app import migrate

    migrate.upgrade(get_settings().resolved_database_url())
    print("schema at", migrate.head_revision())
    return 0


# -- client ----------------------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("CORRAL_TOKEN")
    if not token and Path(".corral/admin-token").exists():
        token = Path(".corral/admin-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.server, headers=headers, timeout=60)


def _path(plural: str, namespace: str, name: str | None = None) -> str:
    base = f"/v1/{plural}" if plural in CLUSTER_SCOPED else f"/v1/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
            print(f"error {response.status_code}: {problem.get('detail')}", file=sys.stderr)
            for err in problem.get("errors", []):
                print(f"  {err['field']}: {err['message']}", file=sys.stderr)
        except ValueError:
            print(f"error {response.status_code}: {response.text}", file=sys.stderr)
        raise SystemExit(1)
    return response.json() if response.content else None


def cmd_apply(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    with _client(args) as client:
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            plural = PLURALS.get(doc.get("kind", ""))
            if plural is None:
                print(f"unknown kind {doc.get('kind')!r}", file=sys.stderr)
                return 1
            namespace = (doc.get("metadata") or {}).get("namespace") or args.namespace
            name = (doc.get("metadata") or {}).get("name")
            existing = client.get(_path(plural, namespace, name)) if name else None
            if existing is not None and existing.status_code == 200:
                patch = {k: v for k, v in doc.items() if k in ("metadata", "spec")}
                _check(
                    client.patch(
                        _path(plural, namespace, name),
                        json=patch,
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                )
                print(f"{plural}/{name} configured")
            else:
                created = _check(client.post(_path(plural, namespace), json=doc))
                print(f"{plural}/{created['metadata']['name']} created")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from app.cli_tables import table

    plural = ALIASES.get(args.resource, args.resource)
    params = {"labelSelector": args.selector} if args.selector and not args.name else {}
    with _client(args) as client:
        body = _check(client.get(_path(plural, args.namespace, args.name), params=params))
    items = [body] if args.name else body["items"]
    if args.output == "json":
        print(json.dumps(body, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(body, sort_keys=False))
    elif args.output == "name":
        for item in items:
            print(f"{plural}/{item['metadata']['name']}")
    elif items or args.name:
        print(table(plural, items, wide=args.output == "wide"))
    else:
        where = "" if plural in CLUSTER_SCOPED else f" in namespace {args.namespace}"
        print(f"No {plural} found{where}.", file=sys.stderr)
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
    labels = dict(item.split("=", 1) for item in args.label)
    body = {"labels": labels} | ({"name": args.name} if args.name else {})
    with _client(args) as client:
        claimed = _check(
            client.post(
                f"/v1/namespaces/{args.namespace}/pools/{args.pool}/claim",
                json=body,
                params={"waitSeconds": args.wait},
            )
        )
    print(f"instances/{claimed['metadata']['name']} claimed from pools/{args.pool}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    body = {"targetNode": args.target_node} if args.target_node else {}
    with _client(args) as client:
        created = _check(client.post(_path("instances", args.namespace, args.name) + "/migrate", json=body))
    print(f"migrations/{created['metadata']['name']} created for instances/{args.name}")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = f"/v1/nodes/{args.node}/drain"
        drain = _check(client.delete(path) if args.cancel else client.post(path))
    for m in drain["migrations"]:
        print(f"{m['namespace']}/{m['vmiName']}: migrations/{m['name']} {m.get('phase') or ''}")
    for refused in drain["notMigratable"]:
        print(f"{refused['namespace']}/{refused['name']}: not migrated: {refused['reason']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    plural = ALIASES.get(args.resource, args.resource)
    with _client(args) as client:
        _check(client.delete(_path(plural, args.namespace, args.name)))
    print(f"{plural}/{args.name} deleted")
    return 0


def _progress_bar(label: str, fraction: float, suffix: str = "") -> None:
    """One line on stderr, redrawn in place: label [#####.....] 45.3% suffix."""
    filled = int(fraction * 30)
    print(
        f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}% {suffix}",
        end="",
        file=sys.stderr,
    )


def cmd_upload(args: argparse.Namespace) -> int:
    """Stream a disk file into an upload DataVolume (created with --size when it does not exist)."""
    source = Path(args.file)
    if not source.is_file():
        print(f"error: no file {args.file!r}", file=sys.stderr)
        return 1
    path = _path("datavolumes", args.namespace, args.name)
    with _client(args) as client:
        if client.get(path).status_code == 404:
            if not args.size:
                print(f"error: no DataVolume {args.name!r}; give --size to create it", file=sys.stderr)
                return 1
            spec = {"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": args.size}}}}
            _check(
                client.post(
                    _path("datavolumes", args.namespace), json={"metadata": {"name": args.name}, "spec": spec}
                )
            )
        _wait_phase(client, path, ("UploadReady",), args.timeout)
        total, sent, started = source.stat().st_size, 0, time.monotonic()

        def chunks() -> Any:
            nonlocal sent
            with source.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    sent += len(chunk)
                    rate = sent / max(time.monotonic() - started, 1e-6) / (1 << 20)
                    _progress_bar(f"uploading {source.name}", sent / max(total, 1), f"{rate:.1f} MiB/s")
                    yield chunk

        done = _check(client.put(path + "/upload", content=chunks(), timeout=None))
    print(file=sys.stderr)
    print(f"datavolumes/{args.name} {done['status']['phase']} ({done['status'].get('capacity')} bytes)")
    return 0


def _wait_phase(client: httpx.Client, path: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """Poll until the object reaches one of `phases`, drawing its progress; exit 1 on Failed or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        status = (_check(client.get(path)) or {}).get("status") or {}
        phase, progress = status.get("phase", "Pending"), str(status.get("progress", "N/A"))
        if phase in phases:
            return dict(status)
        if phase == "Failed":
            print(f"\nerror: {path.rsplit('/', 1)[-1]} Failed: {status.get('message')}", file=sys.stderr)
            raise SystemExit(1)
        if progress.endswith("%"):
            _progress_bar(phase, float(progress.rstrip("%")) / 100)
        if time.monotonic() > deadline:
            print(f"\nerror: still {phase} after {timeout:.0f}s", file=sys.stderr)
            raise SystemExit(1)
        time.sleep(0.5)


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait for a DataVolume to be filled (Succeeded), with its import progress."""
    with _client(args) as client:
        status = _wait_phase(
            client, _path("datavolumes", args.namespace, args.name), ("Succeeded",), args.timeout
        )
    print(file=sys.stderr)
    print(f"datavolumes/{args.name} Succeeded ({status.get('capacity')} bytes on {status.get('nodeName')})")
    return 0


ESCAPE = b"\x1d"  # Ctrl-], as with virsh console and telnet


def cmd_console(args: argparse.Namespace) -> int:
    """The guest's serial console in this terminal (raw), until Ctrl-] or the guest's end."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    with _client(args) as client:
        headers = dict(client.headers)
    url = args.server.replace("http", "ws", 1) + _path("instances", args.namespace, args.name) + "/console"
    url += "?force=true" if args.force else ""
    try:
        socket = connect(url, additional_headers={"Authorization": headers.get("authorization", "")})
    except InvalidStatus as exc:
        detail = exc.response.body.decode(errors="replace") if exc.response.body else ""
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("detail", detail)
        print(f"error {exc.response.status_code}: {detail}", file=sys.stderr)
        return 1
    print(f"connected to {args.name}'s console; Ctrl-] leaves", file=sys.stderr)
    raw = _raw_terminal()
    done = threading.Event()

    def from_guest() -> None:
        try:
            for frame in socket:
                data = frame if isinstance(frame, bytes) else frame.encode()
                sys.stdout.buffer.write(data)
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
        raw()
        socket.close()
    print("\r\n[console closed]", file=sys.stderr)
    return 0


def _raw_terminal() -> Any:
    """Put a terminal stdin in raw mode (keys go to the guest as typed); returns what restores it."""
    if not sys.stdin.isatty():
        return lambda: None
    import termios
    import tty

    saved = termios.tcgetattr(sys.stdin.fileno())
    tty.setraw(sys.stdin.fileno())
    return lambda: termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def cmd_ssh(args: argparse.Namespace) -> int:
    """ssh to the guest's first reported address."""
    with _client(args) as client:
        obj = _check(client.get(_path("instances", args.namespace, args.name)))
    addresses = [nic.get("ipAddress") for nic in (obj.get("status") or {}).get("interfaces", [])]
    address = next((a for a in addresses if a), None)
    if address is None:
        print(f"error: instance {args.name!r} reports no address yet (status.interfaces)", file=sys.stderr)
        return 1
    key = ["-i", args.identity] if args.identity else []
    return os.execvp("ssh", ["ssh", *key, f"{args.user}@{address}", *args.command])  # becomes ssh


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="corral", description="Virtual machines with the ergonomics of containers."
    )
    top.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    for name, fn, text in (
        ("serve", cmd_serve, "API and worker in one process (embedded defaults)"),
        ("api", cmd_api, "the API server alone"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8080)
        p.set_defaults(fn=fn)
    sub.add_parser("worker", help="the reconcile worker alone").set_defaults(fn=cmd_worker)
    openapi = sub.add_parser("openapi", help="print the OpenAPI document (openapi/openapi.json)")
    openapi.add_argument("-o", "--output", help="write to this file")
    openapi.set_defaults(fn=cmd_openapi)
    sub.add_parser("db-upgrade", help="bring the database schema to the latest revision").set_defaults(
        fn=cmd_db_upgrade
    )

    def client_parser(name: str, fn: Any, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--server",
            default=os.environ.get("CORRAL_SERVER", "http://127.0.0.1:8080"),
            help="the Corral API's URL (default: $CORRAL_SERVER or http://127.0.0.1:8080)",
        )
        p.add_argument("--token", default=None, help="bearer token (default: $CORRAL_TOKEN)")
        p.add_argument("-n", "--namespace", default="default")
        p.set_defaults(fn=fn)
        return p

    client_parser("apply", cmd_apply, "create or update objects from a manifest").add_argument(
        "-f", "--filename", required=True
    )
    get = client_parser("get", cmd_get, "list or read objects")
    get.add_argument("resource")
    get.add_argument("name", nargs="?")
    get.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "name", "json", "yaml"),
        default="table",
        help="default: table",
    )
    get.add_argument("-l", "--selector", help="label selector, e.g. app=web,tier!=db")
    claim = client_parser("claim", cmd_claim, "claim a warm instance from a pool")
    claim.add_argument("pool")
    claim.add_argument("--name", help="the claimed instance's new name")
    claim.add_argument("-l", "--label", action="append", default=[], help="k=v (repeatable)")
    claim.add_argument("--wait", type=float, default=0, help="seconds to wait for a ready member")
    migrate = client_parser("migrate", cmd_migrate, "live-migrate an instance to another node")
    migrate.add_argument("name")
    migrate.add_argument("--target-node", help="the node to move to (default: chosen by Corral)")
    drain = client_parser("drain", cmd_drain, "live-migrate everything off a node (admin)")
    drain.add_argument("node")
    drain.add_argument("--cancel", action="store_true", help="abort the drain's unfinished migrations")
    upload = client_parser("upload", cmd_upload, "upload a disk image into a DataVolume")
    upload.add_argument("resource", choices=("dv", "datavolume", "datavolumes"))
    upload.add_argument("name")
    upload.add_argument("--file", required=True, help="a qcow2 or raw disk image")
    upload.add_argument(
        "--size", help="create the DataVolume with this size (e.g. 10Gi) if it does not exist"
    )
    upload.add_argument("--timeout", type=float, default=300, help="seconds to wait for UploadReady")
    wait = client_parser("wait", cmd_wait, "wait for a DataVolume's import, clone or upload to finish")
    wait.add_argument("resource", choices=("dv", "datavolume", "datavolumes"))
    wait.add_argument("name")
    wait.add_argument("--timeout", type=float, default=3600)
    console = client_parser(
        "console", cmd_console, "the guest's serial console in this terminal (Ctrl-] leaves)"
    )
    console.add_argument("name")
    console.add_argument("--force", action="store_true", help="take the console over from another client")
    ssh = client_parser("ssh", cmd_ssh, "ssh to the guest's reported address")
    ssh.add_argument("name")
    ssh.add_argument("-l", "--user", default=os.environ.get("USER", "root"))
    ssh.add_argument("-i", "--identity", help="private key file")
    ssh.add_argument("command", nargs="*", help="a command to run instead of a shell")
    delete = client_parser("delete", cmd_delete, "delete an object")
    delete.add_argument("resource")
    delete.add_argument("name")
    return top


SERVER_COMMANDS = ("serve", "api", "worker", "openapi", "db-upgrade")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("CORRAL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    if args.command in SERVER_COMMANDS:
        return int(args.fn(args))
    # A client command: one line per problem, never a traceback, and no per-request log lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except httpx.ConnectError as exc:
        reach = f"cannot reach the Corral API at {args.server} ({exc}); is it running? (--server)"
        print(f"error: {reach}", file=sys.stderr)
    except httpx.TimeoutException:
        print(f"error: the Corral API at {args.server} did not answer in time", file=sys.stderr)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # e.g. `corral get instances -o json | head`
            sys.stderr.close()
            return 0
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
