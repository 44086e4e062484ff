"""`flywheel`: the one entry point for everything a user does.

The root app holds the top-level commands in this order: `import` (`data`), the loop's (`loop`), the
champion's (`production`); then the groups `stack`, `pipeline` and `bench`, each in its own module.
"""

from __future__ import annotations

import typer

from flows.cli import base, bench, data, loop, pipeline, production, stack

app = typer.Typer(help=base.HELP, no_args_is_help=True, pretty_exceptions_enable=False)
app.callback()(base.main)
for commands in (data.app, loop.app, production.app):
    app.add_typer(commands)  # no name: their commands sit at the top level
app.add_typer(stack.app, name="stack")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(bench.app, name="bench")

__all__ = ["app"]
