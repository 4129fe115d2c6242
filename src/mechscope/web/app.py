"""``mechscope serve``'s app: the runs of a results store, browsed, searched and opened.

Pages are rendered on the server (no inline script: the Content-Security-Policy is
``default-src 'self'``). Routes:

- ``GET /``: the runs browser (``?q=`` full-text search, ``?kind=``);
- ``GET /runs/{id}``: one run: configuration, models, artifacts (links by id);
- ``GET /artifacts/{run_id}/{artifact_id}``: an artifact's file, found by the two ids in the store
  (the request never names a path; a NUL, an absolute or ``..`` path in the record, a symlink on
  the way or a file outside the run's folder is 404);
- ``GET /api/runs`` (``?search=``, ``?kind=``, ``?limit=``), ``GET /api/runs/{id}``: JSON;
- ``DELETE /api/runs/{id}``: forget a run (its files stay).

Every request passes :class:`~mechscope.web.security.GuardMiddleware` first.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Path as PathParam

from mechscope.errors import MechscopeError, NotFoundError
from mechscope.store import RunRecord, RunStore
from mechscope.web.artifacts import artifact_file, is_id
from mechscope.web.features_view import feature_list, feature_page_body
from mechscope.web.live import add_live_routes
from mechscope.web.pages import page
from mechscope.web.security import Guard, GuardMiddleware
from mechscope.web.views import run_view
from mechscope.web.worker import ModelWorker


def _runs_table(records: list[RunRecord]) -> str:
    rows = "".join(
        f"<tr><td>{r.id}</td><td><a href=/runs/{r.id}>{html.escape(r.name)}</a></td><td>{html.escape(r.kind)}</td>"
        f"<td>{html.escape(str(next(iter(r.models.values()), {}).get('name') or ''))}</td>"
        f"<td>{datetime.fromtimestamp(r.created):%Y-%m-%d %H:%M}</td></tr>" for r in records)
    return f"<table class=runs><tr><th>id<th>name<th>kind<th>model<th>registered</tr>{rows}</table>"


ARTIFACT_POLICY = "sandbox; default-src 'none'"
SCRIPT_SUFFIXES = frozenset({".js", ".mjs", ".cjs"})


def create_app(store_path: str | Path, guard: Guard, worker: ModelWorker | None = None, model_name: str = ""):
    """The FastAPI app over the store at ``store_path``, behind ``guard``; with a ``worker``
    (the one thread that runs ``model_name``), also the prompt view and the steering playground."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    store_path = Path(store_path)
    RunStore(store_path).close()  # created or migrated now, so a bad store fails at start, not on a click
    app = FastAPI(title="mechscope", docs_url=None, redoc_url=None, openapi_url=None)
    if worker is not None:
        add_live_routes(app, store_path, worker, model_name or "the app's model")
    else:
        @app.get("/prompt", response_class=HTMLResponse)
        @app.get("/steer", response_class=HTMLResponse)
        def no_model():
            return page("no model", "<h1>No model</h1><p>This server was started without a model, so the prompt "
                                    "view and the steering playground are off: start it with <code>mechscope serve "
                                    "--model NAME</code> (or <code>--demo</code>).</p>")

    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    def open_store() -> RunStore:
        return RunStore(store_path)

    def record(run_id: str) -> RunRecord:
        if not is_id(run_id):
            raise HTTPException(404, "no such run")
        with open_store() as store:
            try:
                return store.get(int(run_id))
            except NotFoundError:
                raise HTTPException(404, "no such run") from None

    @app.get("/", response_class=HTMLResponse)
    def runs_page(q: str = "", kind: str = "", limit: int = Query(100, ge=1, le=1000)):
        with open_store() as store:
            try:
                found = store.find(q.strip() or None, kind or None, limit)
            except MechscopeError as error:  # a malformed search: said on the page
                found = []
                note = f"<p class=error>{html.escape(str(error))}</p>"
            else:
                note = ""
            total = store.count()
        search = (f"<form method=get action=/><input name=q value=\"{html.escape(q)}\" placeholder=\"search runs, "
                  f"explanations, prompts\"><button>search</button></form>")
        return page("runs", f"<h1>Runs</h1>{search}{note}<p>{len(found)} shown of {total}</p>{_runs_table(found)}")

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str, fq: str = "", order: Literal["latent", "density", "max"] = "latent",
                 page_number: int = Query(1, alias="page", ge=1, le=100_000)):
        found = record(run_id)
        view = run_view(found)
        if found.kind == "sae dashboard":
            with open_store() as store:
                try:
                    view.body += feature_list(found, store, fq, order, page_number)
                except MechscopeError as error:
                    view.body += f"<p class=error>{html.escape(str(error))}</p>"
        artifacts = "".join(f"<li><a href=/artifacts/{found.id}/{key}>{html.escape(relpath)}</a></li>"
                            for key, relpath in found.artifacts.items())
        models = "".join(f"<li>{html.escape(role)}: {html.escape(str(info.get('name')))} "
                         f"<code>{html.escape(str(info.get('weights_sha256') or 'no hash')[:16])}</code></li>"
                         for role, info in found.models.items())
        body = (f"<h1>{html.escape(found.name)}</h1><p>{html.escape(found.kind)} · {html.escape(str(found.path))} · "
                f"mechscope {html.escape(found.mechscope_version)} {html.escape(found.git_commit or '')[:12]}</p>"
                f"{view.body}<h2>Models</h2><ul>{models}</ul><h2>Configuration</h2>"
                f"<pre>{html.escape(json.dumps(found.config, indent=1))}</pre><h2>Artifacts</h2><ul>{artifacts}</ul>")
        return page(found.name, body, view.scripts, view.data or None)

    def one_feature(run_id: str, latent: int) -> tuple[RunRecord, dict]:
        found = record(run_id)
        with open_store() as store:
            try:
                return found, store.feature(found.id, latent)
            except NotFoundError:
                raise HTTPException(404, f"run {found.id} has no feature {latent}") from None
            except MechscopeError as error:
                raise HTTPException(409, str(error)) from None

    @app.get("/runs/{run_id}/features/{latent}", response_class=HTMLResponse)
    def feature_page(run_id: str, latent: Annotated[int, PathParam(ge=0)]):
        found, feature = one_feature(run_id, latent)
        try:
            with open_store() as store:
                known = store.present_latents(found.id, [n.get("latent") for n in feature.get("nearest", [])])
            body, data = feature_page_body(found, feature, known)
            return page(f"latent {latent} · {found.name}", body, ["plotly", "figures"], data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # a hand-edited or foreign file
            raise HTTPException(409, f"feature {latent} of run {found.id} is malformed in its features.jsonl "
                                     f"({error!r}); write the dashboard again") from None

    @app.get("/api/runs/{run_id}/features")
    def api_features(run_id: str, search: str = "", order: Literal["latent", "density", "max"] = "latent",
                     limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)):
        found = record(run_id)
        with open_store() as store:
            try:
                rows, total = store.features(found.id, search.strip() or None, order, limit, offset)
            except MechscopeError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
        return {"total": total, "features": [{"latent": r.latent, "density": r.density,
                                              "max_activation": r.max_activation, "explanation": r.explanation}
                                             for r in rows]}

    @app.get("/api/runs/{run_id}/features/{latent}")
    def api_feature(run_id: str, latent: Annotated[int, PathParam(ge=0)]):
        return one_feature(run_id, latent)[1]

    @app.get("/artifacts/{run_id}/{artifact_id}")
    def artifact(run_id: str, artifact_id: str):
        path = artifact_file(record(run_id), artifact_id)
        if path is None:
            raise HTTPException(404, "no such artifact")
        # A run's files are not the app's: an HTML or SVG one opens sandboxed (no script, its own
        # origin, so no session), and a script is served as text, which the browser will not run.
        media = "text/plain; charset=utf-8" if path.suffix.lower() in SCRIPT_SUFFIXES else None
        return FileResponse(path, media_type=media, headers={"content-security-policy": ARTIFACT_POLICY})

    @app.get("/api/runs")
    def api_runs(search: str = "", kind: str = "", limit: int = Query(100, ge=1, le=1000)):
        with open_store() as store:
            try:
                found = store.find(search.strip() or None, kind or None, limit)
            except MechscopeError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
        return [r.to_json() for r in found]

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: str):
        return record(run_id).to_json()

    @app.delete("/api/runs/{run_id}")
    def api_forget(run_id: str):
        found = record(run_id)
        with open_store() as store:
            store.remove(found.id)
        return {"removed": found.id, "files_kept": str(found.path)}

    return GuardMiddleware(app, guard)


__all__ = ["artifact_file", "create_app"]
