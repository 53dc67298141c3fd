"""``taskbox preflight``: check that this host can hold a sandbox safely; exit 1 when it cannot."""

from __future__ import annotations

import json
import sys

import click

from controller.cli.common import CliError, echo_safe
from controller.errors import TaskboxError
from controller.hostcheck import Level
from controller.preflight import run_preflight
from controller.settings import get_settings

#: Exit status when a check refuses the host.
EXIT_REFUSED = 1
_MARKS = {Level.OK: "ok    ", Level.WARN: "WARN  ", Level.REFUSE: "REFUSE"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-probe", is_flag=True, help="Do not start a sandbox to look inside it.")
@click.option(
    "--policy",
    "policy_name",
    default="default",
    show_default=True,
    help="Policy of the probe sandbox.",
)
def preflight(as_json: bool, no_probe: bool, policy_name: str) -> None:
    """Check the engine, runc, seccomp, user namespaces, cgroups and a real sandbox's settings.

    Exit status 1 when any check refuses the host (the controller must not run tasks
    there); warnings are printed loudly but do not change the status.
    """
    try:
        report = run_preflight(get_settings(), probe=not no_probe, policy_name=policy_name)
    except TaskboxError as exc:
        raise CliError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report.dump(), indent=2))
    else:
        for check in report.checks:
            echo_safe(f"{_MARKS[check.level]} {check.name}: {check.summary}")
            if check.level is not Level.OK:
                for extra in (check.detail, f"fix: {check.remedy}" if check.remedy else ""):
                    if extra:
                        echo_safe(f"         {extra}")
        click.echo(f"preflight: {report.level.value}")
    if report.refused:
        sys.exit(EXIT_REFUSED)
