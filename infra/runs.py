"""Trigger a deployment through the Prefect API, follow it, and find its MLflow run."""

from __future__ import annotations

import difflib
import functools
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from mlsys.links import mlflow_run_link
from mlsys.settings import Settings

Say = Callable[[str], None]
T = TypeVar("T")


class RunError(RuntimeError):
    """The deployment could not be run or followed; the message says why."""


@dataclass(frozen=True)
class RunOutcome:
    flow_run_id: str
    flow_run_name: str
    state: str
    message: str | None
    prefect_url: str
    mlflow_url: str | None


def parse_params(pairs: Sequence[str], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``["k=v", …]`` -> ``{k: v}``, values parsed as JSON when they parse.

    With the deployment's parameter ``schema``, a value that parses as JSON into a type
    the parameter does not take, while it takes a string, stays the string it was
    written as: ``batch=20260101`` is the batch id "20260101", not a number.
    """
    params: dict[str, Any] = {}
    properties = (schema or {}).get("properties", {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RunError(f"parameter {pair!r} is not KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if key in properties and not isinstance(parsed, str):
            allowed = _json_types(properties[key], schema or {})
            if "string" in allowed and not _fits(parsed, allowed):
                parsed = value
        params[key] = parsed
    return params


# ---- parameters against the deployment's schema --------------------------------------------


def check_parameters(
    schema: Mapping[str, Any], parameters: Mapping[str, Any], deployment: str = "the deployment"
) -> None:
    """Refuse ``parameters`` that the deployment's ``parameter_openapi_schema`` refuses,
    before any run exists: unknown parameters, unknown fields of grouped options, wrong
    types, values outside a field's choices (enum) or bounds.

    Raises:
        RunError: one line per problem, each naming the parameter or field, e.g.
            ``parameter training.epoch: unknown field; did you mean 'epochs'? (known:
            trainer, epochs, …)``.
    """
    from prefect.utilities.schema_tools.validation import validate

    problems: list[str] = []
    known = list(schema.get("properties", {}))
    for key in parameters:
        if known and key not in known:
            problems.append(
                f"parameter {key}: {_unknown(key, known, 'parameter of ' + deployment)}"
            )
    checked = {k: v for k, v in parameters.items() if not known or k in known}
    try:
        errors = validate(checked, dict(schema), raise_on_error=False, ignore_required=True)
    except Exception as exc:  # a schema that cannot be read: leave it to the server
        raise RunError(f"cannot check the parameters of {deployment}: {exc}") from exc
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        problems.extend(_describe(error))
    if problems:
        raise RunError("\nerror: ".join(dict.fromkeys(problems)))


def _describe(error: Any) -> list[str]:
    """One line per field a jsonschema ``ValidationError`` is about."""
    path = _path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        fields = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in fields]
        return [
            f"parameter {_path([*error.absolute_path, key])}: {_unknown(key, fields, 'field')}"
            for key in extra
        ]
    message = error.message
    tagged = error.schema.get("discriminator") if isinstance(error.schema, dict) else None
    if error.validator == "oneOf" and tagged:
        return _describe_tagged(error, tagged)
    if error.validator in ("anyOf", "oneOf") and error.context:
        # "x is not valid under any of the given schemas": say what the non-null
        # alternative wanted instead ("'x' is not of type 'integer'").
        wanted = [
            e for e in error.context if not (e.validator == "type" and e.validator_value == "null")
        ]
        if wanted:
            best = min(wanted, key=lambda e: len(e.absolute_path))
            sub = _describe(best)
            if (
                best.validator == "additionalProperties"
                or best.absolute_path != error.absolute_path
            ):
                return sub
            message = best.message
    return [f"parameter {path or '(all)'}: {message}"]


def _describe_tagged(error: Any, tagged: Mapping[str, Any]) -> list[str]:
    """A field that is one of several objects told apart by a tag (a pydantic
    discriminated union, e.g. ``{"kind": "gpipe", "stages": 2}``): the tag's choices when
    it names none, else what the named alternative refuses."""
    path = _path(error.absolute_path)
    tag, mapping = tagged["propertyName"], dict(tagged.get("mapping", {}))
    kinds = list(mapping)
    instance = error.instance
    if not isinstance(instance, dict):
        like = json.dumps({tag: instance if instance in mapping else kinds[0]})
        return [
            f"parameter {path}: {json.dumps(instance)} is not an object; give one like {like} "
            f"({tag}: one of {kinds})"
        ]
    kind = instance.get(tag)
    if kind not in mapping:
        return [f"parameter {_path([*error.absolute_path, tag])}: {kind!r} is not one of {kinds}"]
    index = next(
        (i for i, sub in enumerate(error.schema["oneOf"]) if sub.get("$ref") == mapping[kind]),
        None,
    )
    chosen = [e for e in error.context if list(e.relative_schema_path)[:1] == [index]]
    return [line for e in chosen for line in _describe(e)] or [f"parameter {path}: {error.message}"]


def _unknown(key: str, known: Sequence[str], kind: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind}{hint} (known: {', '.join(known)})"


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _json_types(prop: Mapping[str, Any], schema: Mapping[str, Any]) -> set[str]:
    """The JSON types a schema property takes (through anyOf/oneOf/allOf and $ref)."""
    types: set[str] = set()
    kind = prop.get("type")
    if isinstance(kind, str):
        types.add(kind)
    elif isinstance(kind, list):
        types.update(str(k) for k in kind)
    if "$ref" in prop or "properties" in prop:
        types.add("object")
    if "enum" in prop and not kind:
        types.update(_json_type(v) for v in prop["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in prop.get(key, []):
            types |= _json_types(sub, schema)
    return types


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fits(value: Any, types: set[str]) -> bool:
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def mlflow_runs_of(settings: Settings, flow_run_id: str) -> list[Any]:
    """The MLflow parent runs tagged with this Prefect flow run (one per flow run; child
    runs, which carry the same tags, are left out)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
    )
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def mlflow_run_of(settings: Settings, flow_run_id: str) -> tuple[Any, Any]:
    """An MLflow client and the parent run of a Prefect flow run; LookupError unless there
    is exactly one."""
    from mlflow.tracking import MlflowClient

    runs = mlflow_runs_of(settings, flow_run_id)
    if len(runs) != 1:
        raise LookupError(f"expected one MLflow run for flow run {flow_run_id}, got {len(runs)}")
    return MlflowClient(tracking_uri=settings.tracking_uri), runs[0]


def mlflow_run_url(settings: Settings, flow_run_id: str) -> str | None:
    """The URL of the MLflow run tagged with this Prefect flow run, if there is one."""
    runs = mlflow_runs_of(settings, flow_run_id)
    if not runs:
        return None
    info = runs[0].info
    return mlflow_run_link(settings.tracking_uri, info.experiment_id, info.run_id)


def trigger(
    settings: Settings,
    deployment: str,
    params: Sequence[str] | Mapping[str, Any],
    *,
    wait: bool = True,
    timeout_s: float = 1800,
    say: Say = print,
    patience_s: float = 300,
) -> RunOutcome:
    """Create a flow run of ``deployment`` (FLOW/NAME) and, with ``wait``, follow it to the end.

    The parameters are checked against the deployment's form first
    (:func:`check_parameters`): a refused one is a :class:`RunError` naming it, and no
    run is made. The Prefect API is asked patiently: a connection error, a timeout or an
    answer 408/429/500/502/503/504 (a server busy with many submissions) is tried again
    with backoff for up to ``patience_s`` seconds, and the run is created with an
    idempotency key, so that a create tried again never makes two runs.
    """
    from prefect.exceptions import ObjectNotFound

    api = PatientApi(settings.api_url, say)
    with _prefect_client(settings) as client:
        try:
            # The first contact waits less: a stack that is down should say so soon.
            dep = api.call(
                "read the deployment",
                lambda: client.read_deployment_by_name(deployment),
                patience_s=min(patience_s, 30),
            )
        except ObjectNotFound:
            known = sorted(f"{d.name}" for d in client.read_deployments())
            raise RunError(
                f"deployment {deployment!r} not found at {settings.api_url} "
                f"(deployments there: {', '.join(known) or 'none'}); is the stack up?"
            ) from None
        except RunError:
            raise
        except Exception as exc:
            raise RunError(f"cannot reach the Prefect API at {settings.api_url}: {exc}") from exc
        schema = dep.parameter_openapi_schema or {}
        parameters = dict(params) if isinstance(params, Mapping) else parse_params(params, schema)
        if _names_a_new_dataset(schema, parameters):
            # A dataset defined since the last deploy: offer it in the forms first, or
            # Prefect refuses the value as outside the form's choices.
            from infra.forms import offer_dataset_choices

            offer_dataset_choices(settings, say=lambda _: None)
            dep = api.call(
                "read the deployment",
                lambda: client.read_deployment_by_name(deployment),
                patience_s=patience_s,
            )
            schema = dep.parameter_openapi_schema or {}
        # What the server validates: the deployment's parameters updated with these.
        check_parameters(schema, {**(dep.parameters or {}), **parameters}, deployment)
        key = f"mlsys-run-{uuid.uuid4()}"
        try:
            flow_run = api.call(
                "create the flow run",
                lambda: client.create_flow_run_from_deployment(
                    dep.id, parameters=parameters, idempotency_key=key
                ),
                patience_s=patience_s,
            )
        except RunError as exc:
            raise RunError(f"no run of {deployment} created: {exc}") from exc
        except Exception as exc:
            raise RunError(
                f"the Prefect API refused the run of {deployment}: {_detail(exc)}"
            ) from exc
        url = f"{settings.ui_url}/runs/flow-run/{flow_run.id}"
        say(f"flow run {flow_run.name} of {deployment}: {url}")
        if not wait:
            return RunOutcome(str(flow_run.id), flow_run.name, "SCHEDULED", None, url, None)
        deadline = time.monotonic() + timeout_s
        last = None
        started = time.monotonic()
        while True:
            flow_run = api.call(
                "follow the flow run",
                functools.partial(client.read_flow_run, flow_run.id),
                patience_s=patience_s,
            )
            state = flow_run.state
            if state is not None and state.name != last:
                last = state.name
                say(f"  {time.monotonic() - started:6.1f} s  {state.name}")
            if state is not None and state.is_final():
                break
            if time.monotonic() > deadline:
                raise RunError(f"flow run {flow_run.id} still {last} after {timeout_s:.0f} s")
            time.sleep(1)
    try:
        mlflow_url = mlflow_run_url(settings, str(flow_run.id))
    except Exception as exc:  # the run is over; its MLflow link is a nicety
        say(f"  (cannot look up its MLflow run at {settings.tracking_uri}: {exc})")
        mlflow_url = None
    outcome = RunOutcome(
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        state=state.type.value,
        message=state.message,
        prefect_url=url,
        mlflow_url=mlflow_url,
    )
    say(
        f"\n{deployment}: {outcome.state}"
        + (f" ({outcome.message})" if outcome.message and outcome.state != "COMPLETED" else "")
    )
    say(f"  Prefect flow run: {outcome.prefect_url}")
    say(f"  MLflow run:       {outcome.mlflow_url or '(none found)'}")
    return outcome


def _prefect_client(settings: Settings) -> AbstractContextManager[Any]:
    """A synchronous Prefect client of the stack's API, with its credential."""
    from infra.prefect_api import prefect_client

    return prefect_client(settings)


# ---- a patient Prefect API ----------------------------------------------------------------

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0)

# Indirections the tests replace to run without waiting.
_sleep = time.sleep
_clock = time.monotonic


def is_transient(exc: BaseException) -> bool:
    """Whether a Prefect API call that raised ``exc`` is worth trying again: the server
    could not be reached, timed out, dropped the connection, or answered 408, 429 or 5xx.
    (Prefect's client retries some of these itself, PREFECT_CLIENT_MAX_RETRIES times, and
    a connection error only once it has connected; this goes on for longer.)"""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):  # PrefectHTTPStatusError is one
        return exc.response.status_code in _TRANSIENT_STATUS
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


@dataclass
class PatientApi:
    """Calls to the Prefect API, each tried again through transient trouble."""

    api_url: str
    say: Say

    def call(self, what: str, fn: Callable[[], T], *, patience_s: float) -> T:
        """``fn()``, tried again with backoff while it fails transiently (see
        :func:`is_transient`), for up to ``patience_s`` seconds; a first failure is said
        at once, in one line.

        Raises:
            RunError: still failing after ``patience_s``; names the API and the error.
        """
        first: float | None = None
        tries = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = _clock()
                if first is None:
                    first = now
                    self.say(
                        f"  the Prefect API at {self.api_url} is busy or unreachable "
                        f"({_detail(exc)}); trying to {what} again for up to "
                        f"{patience_s:.0f} s"
                    )
                elapsed = now - first
                if elapsed >= patience_s:
                    raise RunError(
                        f"cannot {what}: the Prefect API at {self.api_url} kept failing "
                        f"for {elapsed:.0f} s ({_detail(exc)})"
                    ) from exc
                _sleep(min(_DELAYS_S[min(tries, len(_DELAYS_S) - 1)], patience_s - elapsed))
                tries += 1


def _detail(exc: BaseException) -> str:
    """An HTTP error's status and the server's ``detail``, or the error's type and text."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        try:
            detail = response.json().get("detail", response.text)
        except Exception:
            detail = response.text
        return f"HTTP {response.status_code}: {' '.join(str(detail).split())[:500]}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _names_a_new_dataset(schema: dict[str, Any], parameters: dict[str, Any]) -> bool:
    """Whether ``parameters`` give a dataset that the deployment's form does not offer."""
    dataset = parameters.get("dataset")
    choices = schema.get("properties", {}).get("dataset", {}).get("enum")
    return isinstance(dataset, str) and choices is not None and dataset not in choices
