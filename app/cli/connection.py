"""Where the client commands send their requests: flags, then environment, then the saved context, then the
local defaults; and how a failed request reaches the user (one line with the problem's detail)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import yaml

DEFAULT_SERVER = "http://127.0.0.1:8080"
LOCAL_TOKEN = Path(".corral/admin-token")  # what `corral serve` mints in its default data directory
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
KINDS = (*PLURALS.values(), "devices")
ALIASES = {
    "instance": "instances",
    "vmi": "instances",
    "vmis": "instances",
    "vm": "instances",
    "vms": "instances",
    "pool": "pools",
    "vmpool": "pools",
    "node": "nodes",
    "migration": "migrations",
    "vmim": "migrations",
    "device": "devices",
    "datavolume": "datavolumes",
    "dv": "datavolumes",
    "dvs": "datavolumes",
    "secret": "secrets",
    "network": "networks",
    "net": "networks",
}


class Failure(click.ClickException):
    """What the user sees as `error: <message>` with a non-zero exit."""


def config_path() -> Path:
    return Path(click.get_app_dir("corral")) / "config.yaml"


@dataclass
class Contexts:
    """Saved contexts (server, token, namespace) in the user's config directory, kubectl-style."""

    current: str | None
    contexts: dict[str, dict[str, str]]

    @classmethod
    def load(cls) -> Contexts:
        path = config_path()
        if not path.exists():
            return cls(None, {})
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise Failure(f"{path}: not YAML ({exc})") from None
        contexts = data.get("contexts") or {} if isinstance(data, dict) else None
        if not isinstance(contexts, dict):
            raise Failure(f"{path}: expected a mapping with 'contexts'")
        return cls(data.get("current-context"), {str(k): dict(v or {}) for k, v in contexts.items()})

    def save(self) -> None:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)  # it holds tokens
        path.chmod(0o600)
        data = {"current-context": self.current, "contexts": self.contexts}
        path.write_text(yaml.safe_dump(data, sort_keys=True))

    def chosen(self, name: str | None) -> dict[str, str]:
        name = name or os.environ.get("CORRAL_CONTEXT") or self.current
        if name is None:
            return {}
        if name not in self.contexts:
            raise Failure(f"no context {name!r} (corral config get-contexts)")
        return self.contexts[name]


def plural_of(resource: str) -> str:
    plural = ALIASES.get(resource.lower(), resource.lower())
    if plural not in KINDS:
        raise Failure(f"unknown resource type {resource!r}; one of: {', '.join(KINDS)}")
    return plural


class Api:
    """An HTTP client for one server, token and namespace; every error becomes a Failure."""

    def __init__(self, server: str, token: str | None, namespace: str) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.namespace = namespace
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=60)

    def path(self, plural: str, name: str | None = None, namespace: str | None = None) -> str:
        if plural in CLUSTER_SCOPED:
            base = f"/v1/{plural}"
        else:
            base = f"/v1/namespaces/{namespace or self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded answer of a 2xx; a Failure naming the problem otherwise."""
        answer = self.send(method, path, **kwargs)
        if answer.status_code >= 400:
            raise Failure(problem_text(answer))
        return answer.json() if answer.content else None

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise Failure(
                f"cannot reach the Corral API at {self.server} ({exc}); is it running? (--server)"
            ) from None
        except httpx.TimeoutException:
            raise Failure(f"the Corral API at {self.server} did not answer in time") from None

    def stream_lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        """The lines of a streamed answer (a watch), as they arrive."""
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise Failure(problem_text(answer))
                yield from answer.iter_lines()
        except httpx.ConnectError as exc:
            raise Failure(f"cannot reach the Corral API at {self.server} ({exc})") from None

    def list_all(self, plural: str, params: dict[str, Any], *, everywhere: bool = False) -> dict[str, Any]:
        """Every page of a list, as one list (its resourceVersion is the first page's)."""
        path = f"/v1/{plural}" if everywhere else self.path(plural)
        first: dict[str, Any] = self.call("GET", path, params={**params, "limit": 500})
        page = first
        while page.get("metadata", {}).get("continue"):
            cont = page["metadata"]["continue"]
            page = self.call("GET", path, params={**params, "limit": 500, "continue": cont})
            first["items"].extend(page["items"])
        return first


def problem_text(answer: httpx.Response) -> str:
    """`<status> <detail>` and each field error, from an application/problem+json answer."""
    try:
        problem = answer.json()
    except ValueError:
        return f"{answer.status_code}: {answer.text.strip() or answer.reason_phrase}"
    if not isinstance(problem, dict):
        return f"{answer.status_code}: {problem}"
    detail = problem.get("detail") or problem.get("title") or answer.reason_phrase
    fields = [
        f"{e.get('field')}: {e.get('message')}"
        for e in problem.get("errors") or []
        if e.get("message") and e.get("message") not in str(detail)
    ]
    return f"{answer.status_code} {detail}" + "".join(f"\n  {f}" for f in fields)


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--server, --token, --context and -n on a client command, which receives them as `api`."""

    @functools.wraps(command)
    def with_api(
        server: str | None, token: str | None, context_name: str | None, namespace: str | None, **rest: Any
    ) -> Any:
        saved = Contexts.load().chosen(context_name)
        token = token or saved.get("token")
        if not token and LOCAL_TOKEN.exists():
            token = LOCAL_TOKEN.read_text().strip()
        server = server or saved.get("server") or DEFAULT_SERVER
        api = Api(server, token, namespace or saved.get("namespace") or "default")
        with api.http:
            return command(api=api, **rest)

    options = (
        click.option(
            "--server",
            envvar="CORRAL_SERVER",
            help=f"the Corral API's URL ($CORRAL_SERVER, the context's, or {DEFAULT_SERVER})",
        ),
        click.option("--token", envvar="CORRAL_TOKEN", help="bearer token ($CORRAL_TOKEN, the context's)"),
        click.option("--context", "context_name", help="a saved context (corral config get-contexts)"),
        click.option(
            "-n",
            "--namespace",
            envvar="CORRAL_NAMESPACE",
            help="namespace ($CORRAL_NAMESPACE, the context's, or default)",
        ),
    )
    for option in reversed(options):
        with_api = option(with_api)
    return with_api
