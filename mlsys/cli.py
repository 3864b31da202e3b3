"""The `mlsys` command line: one typed CLI with a group per concern."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="mlsys: a workflow-orchestrated ML platform on Prefect, MLflow and S3.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # The stack and deployment runs live in infra/ (they drive Prefect); engines'
    # commands live with their engines.
    from infra.cli import run_cmd, stack_app
    from mlsys.data.cli import app as data_app
    from mlsys.data.dataset_cli import app as dataset_app
    from mlsys.labeling.cli import app as label_app
    from mlsys.serving.cli import serve_cmd
    from mlsys.validation.cli import app as validate_app

    app.add_typer(stack_app, name="stack")
    app.command("run")(run_cmd)
    app.add_typer(data_app, name="data")
    app.add_typer(dataset_app, name="dataset")
    app.add_typer(label_app, name="label")
    app.add_typer(validate_app, name="validate")
    app.command("serve")(serve_cmd)


_register()


def main() -> None:
    app()
