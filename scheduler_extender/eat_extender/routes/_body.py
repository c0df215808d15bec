"""Reading ``ExtenderArgs`` from a request body, with errors a person can act on."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from eat_extender import wire

MAX_ERRORS = 3


class BadRequest(ValueError):
    """The body is not an ExtenderArgs the extender can use."""


def parse_args(body: bytes) -> tuple[wire.ExtenderArgs, list[str]]:
    """(args, candidate node names); BadRequest naming the field and the problem."""
    if not body.strip():
        raise BadRequest("empty request body (expected ExtenderArgs JSON)")
    try:
        args = wire.ExtenderArgs.model_validate_json(body)
        return args, args.candidate_names()
    except ValidationError as e:
        raise BadRequest(describe(e)) from None
    except ValueError as e:
        raise BadRequest(str(e)) from None


def describe(e: ValidationError) -> str:
    errors = e.errors(include_url=False, include_input=False)
    parts = [f"{_loc(err)}: {err['msg']}" for err in errors[:MAX_ERRORS]]
    more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
    return "invalid ExtenderArgs: " + "; ".join(parts) + more


def _loc(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"]) or "body"


def openapi_body() -> dict[str, Any]:
    """``openapi_extra`` documenting an ExtenderArgs body that the route reads itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExtenderArgs"}}},
        }
    }
