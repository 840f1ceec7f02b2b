"""The `corral` command: the server (serve, api, worker, db-upgrade, openapi) and the client (get, describe,
apply, delete, the instance actions, exec, claim, migrate, ...), on Click, with Rich for live displays."""

from __future__ import annotations

import logging
import os
import sys

import click

from app import __version__
from app.cli import contexts, instances, resources, server
from app.cli.connection import Failure
from app.cli.server import openapi_document

__all__ = ["main", "openapi_document", "root"]
log = logging.getLogger("corral")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="corral", message="%(prog)s %(version)s")
def root() -> None:
    """Virtual machines with the ergonomics of containers."""


for command in (
    *server.SERVER_COMMANDS,
    resources.get,
    resources.describe,
    resources.apply,
    resources.delete,
    resources.wait,
    *instances.ACTION_COMMANDS,
    instances.exec_,
    instances.claim,
    instances.migrate,
    instances.cancel_migration,
    instances.drain,
    instances.upload,
    instances.console_,
    instances.ssh,
    contexts.config,
    contexts.completion,
):
    root.add_command(command)

SERVER_NAMES = {command.name for command in server.SERVER_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """Run a command; a client command's failure is one line on stderr and a non-zero exit, never a
    traceback, and nothing else is logged unless CORRAL_LOG_LEVEL asks."""
    args = sys.argv[1:] if argv is None else argv
    serving = bool(args) and args[0] in SERVER_NAMES
    logging.basicConfig(
        level=os.environ.get("CORRAL_LOG_LEVEL", "INFO" if serving else "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if not serving:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        root.main(args, prog_name="corral", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.UsageError as exc:
        exc.show()
        return exc.exit_code
    except (Failure, click.ClickException) as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:  # e.g. `corral get instances -o json | head`
        sys.stderr.close()
        return 0
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return 1
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except Exception as exc:  # a bug of ours: still one line, the traceback only when asked for
        log.debug("traceback", exc_info=True)
        click.echo(f"error: corral failed: {exc!r} (CORRAL_LOG_LEVEL=DEBUG shows where)", err=True)
        return 1
    return 0
