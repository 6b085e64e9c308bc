"""The ``armetrics`` command: thin click commands over the Python API.

Layout: this module holds the click group, ``--debug`` and :func:`main` (the error
mapping); :mod:`armetrics.cli.analyze` the ``analyze`` and ``probes`` commands (and the
sweep table of ``analyze --out-dir``); :mod:`armetrics.cli.compare` ``compare`` and
``zoo``. The library never imports this package.

Errors raised by armetrics print as one line ``error: ...`` with exit code 1 (usage
errors: 2; Ctrl-C / SIGTERM: 130); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click

from .. import __version__, interrupt
from ..errors import ArmetricsError, first_line, one_line, shorten

MESSAGE_LIMIT = 1000  # an error line echoing a 5000-character argument is cut here


class Session:
    """One :func:`main` call: whether ``--debug`` (or ``ARMETRICS_DEBUG``) is on. Handed to
    click as the context object; ``--debug`` sets it, :func:`main`'s error mapping reads it."""

    def __init__(self) -> None:
        self.debug = bool(os.environ.get("ARMETRICS_DEBUG"))

    def begin(self, debug: bool) -> None:
        """Called once per run, before any other option of the command is processed."""
        self.debug = self.debug or debug
        if self.debug:
            os.environ["ARMETRICS_DEBUG"] = "1"  # the library shows third-party warnings too
        else:
            warnings.simplefilter("ignore")  # main() restores the caller's filters
            logging.disable(logging.CRITICAL)  # libraries' log records (PIL's TIFF decoder, torch): armetrics prints with click


def _begin(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    session = ctx.find_object(Session)
    if session is not None:  # None: the command was invoked without main() (click's test runner)
        session.begin(value)


def debug_option(command):
    """``--debug`` on a command: one eager flag that no command reads. It reaches
    :func:`main` through the :class:`Session` (tracebacks, warnings and log records shown)."""
    return click.option("--debug", is_flag=True, is_eager=True, expose_value=False, callback=_begin,
                        help="Show tracebacks.")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="armetrics")
def cli() -> None:
    """Measure what adversarial training does to a trained network."""


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exits with 0, 1 (armetrics error), 2 (usage) or 130 (interrupted).
    Called without ``argv`` (the console script), it also turns SIGINT and SIGTERM into
    a clean interruption that cannot be lost (:mod:`armetrics.interrupt`).

    Third-party warnings and log records (torch, robustbench, PIL, pickle protocols) are
    silenced unless ``--debug`` (or ``ARMETRICS_DEBUG=1``), which also shows tracebacks."""
    console = argv is None
    if console:
        argv = sys.argv[1:]
        interrupt.install()
    session = Session()
    interrupt.reset()
    with warnings.catch_warnings():
        try:
            _run(list(argv), session)
        except SystemExit as exc:
            if console and exc.code == 130:
                _exit_interrupted()
            raise
        finally:
            logging.disable(logging.NOTSET)


def _exit_interrupted() -> None:
    """End an interrupted command with status 130 at once. Unwinding through the
    interpreter's shutdown after a KeyboardInterrupt sometimes ends the process *by*
    SIGINT instead (status -2; seen under ``python -m`` about once in ten runs), which
    callers that check for 130 misread; everything worth keeping is already written
    (reports are renamed into place or not at all), so nothing is lost by skipping it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def _run(argv: list[str], session: Session) -> None:
    try:
        try:
            rv = cli.main(args=argv, prog_name="armetrics", standalone_mode=False, obj=session)
        finally:
            if "torch.distributed" in sys.modules:
                from .. import distributed

                distributed.shutdown()
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.message = one_line(exc.message)
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(f"error: interrupted ({interrupt.written_text()})", err=True)
        sys.exit(130)
    except ArmetricsError as exc:
        if session.debug:
            raise
        click.echo(f"error: {shorten(one_line(str(exc)), MESSAGE_LIMIT)}", err=True)
        sys.exit(1)
    except Exception as exc:  # an armetrics bug or an unexpected library error
        if session.debug:
            raise
        first = one_line(first_line(exc, 300))
        click.echo(f"error: unexpected {type(exc).__name__}: {first} (rerun with --debug for a traceback)", err=True)
        sys.exit(1)


# the commands, registered on the group (imported last: they use debug_option)
from .analyze import analyze_cmd, probes_cmd  # noqa: E402
from .compare import compare_cmd, zoo_cmd  # noqa: E402
from .audit import audit_cmd  # noqa: E402

for _command in (analyze_cmd, probes_cmd, compare_cmd, zoo_cmd, audit_cmd):
    cli.add_command(_command)
