"""The OpenAPI 3.1 document of the funds service, served at ``GET /openapi.json``.

Written by hand to match the behaviour exactly (every status a route can answer is listed);
the test suite runs schemathesis against the served app to keep the two in step.
"""

from __future__ import annotations

from typing import Any

from examples.funds.model import MAX_SIMULATIONS
from examples.funds.repository import MAX_PAGE

PROBLEM_REF = {"$ref": "#/components/responses/Problem"}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(status): PROBLEM_REF for status in statuses}


# Statuses any /api route may answer through the middleware stack.
COMMON = (400, 401, 429, 503)

STAGE = {
    "type": "object",
    "required": ["name", "months", "graduate", "exit"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "months": {"type": "integer", "minimum": 1, "maximum": 240},
        "graduate": {"type": "number", "minimum": 0, "maximum": 1},
        "exit": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "description": "graduate + exit must not exceed 1.",
}

FUND = {
    "type": "object",
    "required": [
        "id",
        "name",
        "description",
        "size",
        "stages",
        "irr",
        "model_version",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "size": {"type": "number"},
        "stages": {"type": "array", "items": {"$ref": "#/components/schemas/Stage"}},
        "irr": {"type": "number"},
        "model_version": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

FUND_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"},
    "size": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e15},
    "description": {"type": ["string", "null"], "maxLength": 5000},
    "stages": {
        "type": "array",
        "minItems": 1,
        "maxItems": 20,
        "items": {"$ref": "#/components/schemas/Stage"},
    },
}

USER = {
    "name": "X-User-Id",
    "in": "header",
    "required": True,
    "description": "The caller (a demo stand-in for authentication).",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._@:-]{1,64}$"},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes the request safe to retry: the first result is replayed for 24 h.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
FUND_ID = {"name": "fund_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi() -> dict[str, Any]:
    """The document."""
    fund_ref = {"$ref": "#/components/schemas/Fund"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "prodkit funds example",
            "version": "1.0.0",
            "description": "A small funds API wired with every prodkit middleware.",
        },
        "paths": {
            "/api/funds": {
                "post": {
                    "summary": "Create a fund",
                    "parameters": [USER, IDEMPOTENCY_KEY],
                    "requestBody": {
                        "required": True,
                        "content": _json({"$ref": "#/components/schemas/FundCreate"}),
                    },
                    "responses": {
                        "201": {
                            "description": "Created",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": _json(fund_ref),
                        },
                        **_problems(*COMMON, 409, 413, 415, 422),
                    },
                },
                "get": {
                    "summary": "The caller's funds, newest first",
                    "parameters": [
                        USER,
                        {
                            "name": "q",
                            "in": "query",
                            "schema": {"type": "string", "maxLength": 200},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "A page",
                            "content": _json({"$ref": "#/components/schemas/FundPage"}),
                        },
                        **_problems(*COMMON),
                    },
                },
            },
            "/api/funds/{fund_id}": {
                "get": {
                    "summary": "One fund",
                    "parameters": [USER, FUND_ID],
                    "responses": {
                        "200": {"description": "The fund", "content": _json(fund_ref)},
                        "304": {"description": "Not modified (If-None-Match)"},
                        **_problems(*COMMON, 404),
                    },
                },
                "patch": {
                    "summary": "Update a fund",
                    "parameters": [USER, FUND_ID, IDEMPOTENCY_KEY],
                    "requestBody": {
                        "required": True,
                        "content": _json({"$ref": "#/components/schemas/FundPatch"}),
                    },
                    "responses": {
                        "200": {"description": "Updated", "content": _json(fund_ref)},
                        **_problems(*COMMON, 404, 409, 413, 415, 422),
                    },
                },
                "delete": {
                    "summary": "Soft-delete a fund",
                    "parameters": [USER, FUND_ID],
                    "responses": {"204": {"description": "Deleted"}, **_problems(*COMMON, 404)},
                },
            },
            "/api/funds/{fund_id}/projection": {
                "get": {
                    "summary": "Deterministic Monte-Carlo projection",
                    "parameters": [
                        USER,
                        FUND_ID,
                        {
                            "name": "simulations",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SIMULATIONS},
                        },
                        {
                            "name": "seed",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The projection",
                            "content": _json({"$ref": "#/components/schemas/Projection"}),
                        },
                        "304": {"description": "Not modified (If-None-Match)"},
                        **_problems(*COMMON, 404),
                    },
                },
            },
            "/api/summary": {
                "get": {
                    "summary": "The caller's totals",
                    "parameters": [USER],
                    "responses": {
                        "200": {
                            "description": "Totals",
                            "content": _json({"$ref": "#/components/schemas/Summary"}),
                        },
                        **_problems(*COMMON),
                    },
                },
            },
        },
        "components": {
            "schemas": {
                "Stage": STAGE,
                "Fund": FUND,
                "FundCreate": {
                    "type": "object",
                    "required": ["name", "size", "stages"],
                    "additionalProperties": False,
                    "properties": FUND_FIELDS,
                },
                "FundPatch": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": FUND_FIELDS,
                },
                "FundPage": {
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": fund_ref},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "Projection": {
                    "type": "object",
                    "required": [
                        "fund_id",
                        "simulations",
                        "seed",
                        "model_version",
                        "expected_multiple",
                        "percentiles",
                    ],
                    "properties": {
                        "fund_id": {"type": "string"},
                        "simulations": {"type": "integer"},
                        "seed": {"type": "integer"},
                        "model_version": {"type": "string"},
                        "expected_multiple": {"type": "number"},
                        "expected_value": {"type": "number"},
                        "percentiles": {
                            "type": "object",
                            "additionalProperties": {"type": "number"},
                        },
                        "exit_probability_by_stage": {"type": "array", "items": {"type": "object"}},
                        "winner_probability": {"type": "number"},
                    },
                },
                "Summary": {
                    "type": "object",
                    "required": ["total_funds", "total_aum", "avg_irr", "last_activity"],
                    "properties": {
                        "total_funds": {"type": "integer"},
                        "total_aum": {"type": "number"},
                        "avg_irr": {"type": ["number", "null"]},
                        "last_activity": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details with prodkit's code and request_id.",
                    "required": ["type", "title", "status", "detail", "code", "request_id"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                        "request_id": {"type": ["string", "null"]},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["pointer", "detail"],
                                "properties": {
                                    "pointer": {"type": "string"},
                                    "detail": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "A problem (RFC 9457)",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
        },
    }
