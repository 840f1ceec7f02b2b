"""`corral config`: saved contexts (a server, a token, a default namespace) in the user's config directory,
so `--server` and `--token` need not be typed again; and `corral completion` for the shells."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from app.cli.connection import Contexts, Failure, config_path
from app.cli.tables import table


@click.group("config")
def config() -> None:
    """Saved contexts: server, token and namespace (kept in ~/.config/corral/config.yaml, mode 0600)."""


@config.command("set-context")
@click.argument("name")
@click.option("--server", help="the Corral API's URL")
@click.option("--token", help="bearer token")
@click.option("-n", "--namespace", help="the default namespace")
@click.option("--use", is_flag=True, help="make it the current context")
def set_context(name: str, server: str | None, token: str | None, namespace: str | None, use: bool) -> None:
    """Create a context or change its fields (the others are kept)."""
    saved = Contexts.load()
    context = saved.contexts.setdefault(name, {})
    context.update({k: v for k, v in (("server", server), ("token", token), ("namespace", namespace)) if v})
    if use or saved.current is None:
        saved.current = name
    saved.save()
    click.echo(f"context {name} saved" + (" (current)" if saved.current == name else ""))


@config.command("use-context")
@click.argument("name")
def use_context(name: str) -> None:
    """Make a context the current one."""
    saved = Contexts.load()
    if name not in saved.contexts:
        raise Failure(f"no context {name!r} (corral config get-contexts)")
    saved.current = name
    saved.save()
    click.echo(f"switched to context {name}")


@config.command("get-contexts")
def get_contexts() -> None:
    """List the saved contexts (tokens are not shown)."""
    saved = Contexts.load()
    if not saved.contexts:
        click.echo(f"No contexts saved in {config_path()}.", err=True)
        return
    rows = [{"metadata": {"name": name}, **fields} for name, fields in sorted(saved.contexts.items())]
    columns = [
        ("CURRENT", lambda row: "*" if row["metadata"]["name"] == saved.current else ""),
        ("NAME", lambda row: str(row["metadata"]["name"])),
        ("SERVER", lambda row: str(row.get("server", ""))),
        ("NAMESPACE", lambda row: str(row.get("namespace", ""))),
        ("TOKEN", lambda row: "set" if row.get("token") else ""),
    ]
    click.echo(table("", rows, columns=columns))


@config.command("current-context")
def current_context() -> None:
    """Print the current context's name."""
    current = Contexts.load().current
    if current is None:
        raise Failure("no current context (corral config use-context NAME)")
    click.echo(current)


@config.command("delete-context")
@click.argument("name")
def delete_context(name: str) -> None:
    """Forget a context."""
    saved = Contexts.load()
    if saved.contexts.pop(name, None) is None:
        raise Failure(f"no context {name!r}")
    if saved.current == name:
        saved.current = None
    saved.save()
    click.echo(f"context {name} deleted")


@click.command()
@click.argument("shell", type=click.Choice(("bash", "zsh", "fish")))
def completion(shell: str) -> None:
    """Print the shell completion script: e.g. `eval "$(corral completion bash)"` in ~/.bashrc."""
    from app.cli import root

    completer = get_completion_class(shell)
    if completer is None:
        raise Failure(f"no completion for {shell}")
    click.echo(completer(root, {}, "corral", "_CORRAL_COMPLETE").source())
