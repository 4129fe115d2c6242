"""The ``mechscope`` command line: the app and its commands.

``inspect`` a prompt, ``patch``, ``trace``, ``circuit``, ``graph`` (attribution graphs), ``compare`` two models,
``sae``, ``probe``, ``steer``,
``refusal``, ``lens``, ``diff`` two models, ``audit`` a fine-tune, ``organism`` (build, check, merge, list), list
``models``, ``explain`` units in words (scored), ``serve-llm`` (an OpenAI-compatible server over a local
model), ``runs`` (the results store, where every command's output folder is registered), ``serve``
(the web app over that store). Each command lives in its own module and
only parses, calls one library run function and prints; the error policy (one line and exit
status 2 for mechscope's own errors, tracebacks for bugs) is :class:`~mechscope.cli.core.MechscopeGroup`.
"""

from __future__ import annotations

from inspect import signature

import typer

from mechscope.cli.analysis import inspect, patch, trace
from mechscope.cli.audit import audit
from mechscope.cli.autointerp import explain, serve_llm
from mechscope.cli.circuit import circuit
from mechscope.cli.compare import compare
from mechscope.cli.core import new_app
from mechscope.cli.diff import diff
from mechscope.cli.graph import graph
from mechscope.cli.lens import lens_app
from mechscope.cli.models import models
from mechscope.cli.organism import organism_app
from mechscope.cli.probe import probe
from mechscope.cli.runs import registering, runs_app
from mechscope.cli.sae import sae_app
from mechscope.cli.serve import serve
from mechscope.cli.steer import refusal, steer

app = new_app("Mechanistic interpretability of HuggingFace causal LMs.")

for command in (inspect, patch, trace, models, circuit, graph, compare, probe, steer, refusal, diff, audit, explain):
    app.command()(command)
app.command("serve-llm")(serve_llm)
app.command()(serve)
app.add_typer(sae_app, name="sae")

app.add_typer(lens_app, name="lens")
app.add_typer(organism_app, name="organism")
app.add_typer(runs_app, name="runs")


def _registering_outputs(typer_app: typer.Typer) -> None:
    """Every command with an output folder (an ``out`` option), in this app and its sub-apps,
    registers that folder in the results store when it finishes."""
    for info in typer_app.registered_commands:
        if "out" in signature(info.callback).parameters:
            info.callback = registering(info.callback)
    for group in typer_app.registered_groups:
        _registering_outputs(group.typer_instance)


_registering_outputs(app)

if __name__ == "__main__":
    app()
