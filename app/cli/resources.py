"""The commands on objects of every kind: get (and watch), describe, apply, delete, wait."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import yaml
from click.shell_completion import CompletionItem

from app.cli.connection import CLUSTER_SCOPED, KINDS, PLURALS, Api, Failure, connection_options, plural_of
from app.cli.describe import describe as describe_text
from app.cli.progress import waiting
from app.cli.tables import table

OUTPUTS = ("table", "wide", "name", "json", "yaml")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def complete_kind(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(k) for k in KINDS if k.startswith(incomplete)]


def resource_argument(command: Any) -> Any:
    return click.argument("resource", shell_complete=complete_kind)(command)


def dump(body: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(yaml.safe_dump(body, sort_keys=False).rstrip())


@click.command()
@resource_argument
@click.argument("names", nargs=-1)
@click.option("-o", "--output", type=click.Choice(OUTPUTS), default="table", show_default=True)
@click.option("-l", "--selector", help="label selector, e.g. app=web,tier!=db")
@click.option("-A", "--all-namespaces", is_flag=True, help="every namespace (needs a cluster-wide role)")
@click.option("-w", "--watch", is_flag=True, help="after the list, print each change as it happens")
@connection_options
def get(
    api: Api,
    resource: str,
    names: tuple[str, ...],
    output: str,
    selector: str | None,
    all_namespaces: bool,
    watch: bool,
) -> None:
    """List objects of a kind, or read the named ones."""
    plural = plural_of(resource)
    everywhere = all_namespaces and plural not in CLUSTER_SCOPED
    if names:
        items = [api.call("GET", api.path(plural, name)) for name in names]
        body: Any = items[0] if len(items) == 1 else {"items": items}
        version = None
    else:
        body = api.list_all(plural, {"labelSelector": selector} if selector else {}, everywhere=everywhere)
        items, version = body["items"], body.get("metadata", {}).get("resourceVersion")
    if output in ("json", "yaml"):
        dump(body, output)
    elif output == "name":
        for item in items:
            click.echo(f"{plural}/{item['metadata']['name']}")
    elif items:
        click.echo(table(plural, items, wide=output == "wide", namespaces=everywhere))
    elif not watch:
        where = "" if plural in CLUSTER_SCOPED or everywhere else f" in namespace {api.namespace}"
        click.echo(f"No {plural} found{where}.", err=True)
    if watch:
        _follow(api, plural, set(names), selector, version, output, everywhere)


def _follow(
    api: Api,
    plural: str,
    names: set[str],
    selector: str | None,
    version: str | None,
    output: str,
    everywhere: bool,
) -> None:
    """Print each change after the list, one row (or document) per event, until interrupted."""
    params: dict[str, Any] = {"watch": "true"}
    if selector:
        params["labelSelector"] = selector
    if version:
        params["resourceVersion"] = version
    path = f"/v1/{plural}" if everywhere else api.path(plural)
    for line in api.stream_lines(path, params):
        if not line:
            continue
        event = json.loads(line)
        item = event.get("object") or {}
        if event.get("type") == "ERROR":
            raise Failure(str(item.get("detail") or item))
        if event.get("type") == "BOOKMARK" or (names and item.get("metadata", {}).get("name") not in names):
            continue
        if output in ("json", "yaml"):
            dump(event if output == "json" else item, output)
        elif output == "name":
            click.echo(f"{plural}/{item['metadata']['name']}")
        else:
            row = table(plural, [item], wide=output == "wide", namespaces=everywhere, header=False)
            click.echo(f"{row}   {event['type']}" if event["type"] == "DELETED" else row)


@click.command()
@resource_argument
@click.argument("name")
@connection_options
def describe(api: Api, resource: str, name: str) -> None:
    """Show one object for people: spec summary, status, conditions, phase history, guest operations."""
    plural = plural_of(resource)
    obj = api.call("GET", api.path(plural, name))
    operations: list[Any] = []
    if plural == "instances":
        answer = api.send("GET", api.path(plural, name) + "/guest/operations")
        if answer.status_code == 200:  # an operator's view; a viewer sees the rest
            operations = answer.json()["items"][:10]
    click.echo(describe_text(plural, obj, operations))


def manifests(filenames: tuple[str, ...], recursive: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """(source, document) for every document of every file: `-` is stdin, a directory its manifests."""
    for filename in filenames:
        if filename == "-":
            sources: list[tuple[str, str]] = [("<stdin>", sys.stdin.read())]
        else:
            path = Path(filename)
            if path.is_dir():
                pattern = "**/*" if recursive else "*"
                files = sorted(p for p in path.glob(pattern) if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            else:
                files = [path]
            sources = [(str(f), f.read_text()) for f in files]
        for source, text in sources:
            try:
                documents = list(yaml.safe_load_all(text))
            except yaml.YAMLError as exc:
                raise Failure(f"{source}: not YAML or JSON: {exc}") from None
            for document in documents:
                if document is None:
                    continue
                if not isinstance(document, dict):
                    raise Failure(f"{source}: a document must be a mapping, not {type(document).__name__}")
                if document.get("kind") == "List":  # kubectl's List of items
                    yield from ((source, item) for item in document.get("items") or [])
                else:
                    yield source, document


def _kind_of(source: str, document: dict[str, Any]) -> str:
    plural = PLURALS.get(str(document.get("kind", "")))
    if plural is None:
        known = ", ".join(PLURALS)
        raise Failure(f"{source}: unknown kind {document.get('kind')!r}; one of: {known}")
    return plural


def filename_option(command: Any) -> Any:
    command = click.option("-R", "--recursive", is_flag=True, help="directories: their subdirectories too")(
        command
    )
    return click.option(
        "-f",
        "--filename",
        "filenames",
        multiple=True,
        help="a manifest (YAML or JSON, several documents allowed), a directory of them, or - for stdin",
    )(command)


@click.command()
@filename_option
@connection_options
def apply(api: Api, filenames: tuple[str, ...], recursive: bool) -> None:
    """Create or update the objects of manifests: every document is tried, failures are listed."""
    if not filenames:
        raise click.UsageError("give at least one -f FILE (a file, a directory, or - for stdin)")
    failed = 0
    for source, document in manifests(filenames, recursive):
        plural = _kind_of(source, document)
        meta = document.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        try:
            click.echo(_apply_one(api, plural, document, name, namespace))
        except Failure as exc:
            failed += 1
            click.echo(f"error: {plural}/{name or meta.get('generateName', '')}: {exc.message}", err=True)
    if failed:
        raise SystemExit(1)


def _apply_one(
    api: Api, plural: str, document: dict[str, Any], name: str | None, namespace: str | None
) -> str:
    path = api.path(plural, name, namespace)
    existing = api.send("GET", path) if name else None
    if existing is not None and existing.status_code == 200:
        before = existing.json()["metadata"].get("resourceVersion")
        patch = {k: v for k, v in document.items() if k in ("metadata", "spec")}
        headers = {"Content-Type": "application/merge-patch+json"}
        after = api.call("PATCH", path, content=json.dumps(patch), headers=headers)
        changed = after["metadata"].get("resourceVersion") != before
        return f"{plural}/{name} {'configured' if changed else 'unchanged'}"
    created = api.call("POST", api.path(plural, namespace=namespace), json=document)
    return f"{plural}/{created['metadata']['name']} created"


@click.command()
@click.argument("resource", required=False, shell_complete=complete_kind)
@click.argument("names", nargs=-1)
@filename_option
@click.option("--wait", is_flag=True, help="return once the objects are gone (the worker tears them down)")
@click.option("--timeout", type=float, default=300, show_default=True, help="seconds --wait waits")
@connection_options
def delete(
    api: Api,
    resource: str | None,
    names: tuple[str, ...],
    filenames: tuple[str, ...],
    recursive: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Delete objects, by kind and names or by manifests (-f)."""
    targets = [(plural_of(resource), name, None) for name in names] if resource else []
    for source, document in manifests(filenames, recursive):
        meta = document.get("metadata") or {}
        targets.append((_kind_of(source, document), str(meta.get("name", "")), meta.get("namespace")))
    if not targets:
        raise click.UsageError("name what to delete: RESOURCE NAME... or -f FILE")
    paths = []
    for plural, name, namespace in targets:
        path = api.path(plural, name, namespace)
        api.call("DELETE", path)
        paths.append((f"{plural}/{name}", path))
        if not wait:
            click.echo(f"{plural}/{name} deletion requested")
    if wait:
        deadline = time.monotonic() + timeout
        for label, path in paths:
            with waiting(f"deleting {label}") as status:
                while (answer := api.send("GET", path)).status_code != 404:
                    if time.monotonic() > deadline:
                        raise Failure(f"{label} still exists after {timeout:.0f}s")
                    phase = (answer.json().get("status") or {}).get("phase") if answer.is_success else None
                    status.update(f"deleting {label} ({phase or 'Terminating'})")
                    time.sleep(0.5)
            click.echo(f"{label} deleted")


def wait_for_phase(
    api: Api, path: str, phases: tuple[str, ...], timeout: float, label: str
) -> dict[str, Any]:
    """Poll until the object reaches one of `phases`, showing its phase and progress; Failed or a timeout
    fail the command."""
    deadline = time.monotonic() + timeout
    with waiting(f"{label}: waiting for {' or '.join(phases)}") as status:
        while True:
            current: dict[str, Any] = (api.call("GET", path) or {}).get("status") or {}
            phase = current.get("phase", "Pending")
            if phase in phases:
                return current
            if phase == "Failed":
                raise Failure(
                    f"{label} Failed: {current.get('reason', '')} {current.get('message', '')}".strip()
                )
            if time.monotonic() > deadline:
                raise Failure(f"{label} still {phase} after {timeout:.0f}s")
            progress = current.get("progress")
            status.update(f"{label}: {phase}" + (f" {progress}" if progress and progress != "N/A" else ""))
            time.sleep(0.5)


@click.command()
@resource_argument
@click.argument("name")
@click.option(
    "--for", "phases", default="", help="the phase(s) to wait for, comma-separated (default: by kind)"
)
@click.option("--timeout", type=float, default=3600, show_default=True)
@connection_options
def wait(api: Api, resource: str, name: str, phases: str, timeout: float) -> None:
    """Wait for an object to reach a phase: a DataVolume Succeeded, an instance Running, a migration done."""
    plural = plural_of(resource)
    defaults = {"datavolumes": "Succeeded", "migrations": "Succeeded", "instances": "Running"}
    wanted = tuple(p for p in (phases or defaults.get(plural, "")).split(",") if p)
    if not wanted:
        raise click.UsageError(f"--for is needed for {plural}")
    reached = wait_for_phase(api, api.path(plural, name), wanted, timeout, f"{plural}/{name}")
    click.echo(f"{plural}/{name} {reached.get('phase')}")
