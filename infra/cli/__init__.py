"""The `mlsys` command (`app`, `main`): one typed CLI with a group per concern.

The command line lives here, above the engines, so that the engine package (mlsys/) holds
no command and never imports infra/. One module per group: stack.py (`stack`, `run`: the
local stack and deployment runs), data.py (`data`), dataset.py (`dataset`), label.py
(`label`), validate.py (`validate`) and serve.py (`serve`). A command imports the engine
modules that pull in Snorkel, torch, Great Expectations, MLflow or uvicorn only when it
runs, so `mlsys --help` and every other command start without them.
"""

from __future__ import annotations

import typer

from infra.cli.data import app as data_app
from infra.cli.dataset import app as dataset_app
from infra.cli.label import app as label_app
from infra.cli.serve import serve_cmd
from infra.cli.stack import run_cmd, stack_app
from infra.cli.validate import app as validate_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="mlsys: a workflow-orchestrated ML platform on Prefect, MLflow and S3.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack_app, name="stack")
app.command("run")(run_cmd)
app.add_typer(data_app, name="data")
app.add_typer(dataset_app, name="dataset")
app.add_typer(label_app, name="label")
app.add_typer(validate_app, name="validate")
app.command("serve")(serve_cmd)


def main() -> None:
    """The `mlsys` console script."""
    app()
