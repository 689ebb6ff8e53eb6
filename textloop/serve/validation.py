"""Request checks and their 422 answers: never echo more than a short prefix of the input.

FastAPI's default validation handler puts the whole offending value into the answer (a 10 MB
text came back whole) and cannot encode a lone surrogate (a 500 and a dropped connection). Every
422 here has FastAPI's shape, `{"detail": [{"loc", "msg", "type", "input"}]}`, with `input` cut
to PREVIEW_CHARS characters and anything that is not valid UTF-8 escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from textloop.core.config import TextConfig
from textloop.core.limits import LimitResult, apply_text_limit, overlong_message

log = logging.getLogger(__name__)

PREVIEW_CHARS = 64  # longest piece of an input value a 422 entry repeats
DETAIL_CHARS = 500  # longest HTTP error detail (some quote user input: an unknown key)
MAX_ERRORS = 20  # errors listed per answer (the total is given)
EMPTY_MSG = ("text is empty after normalisation (only whitespace, control or invisible "
             "format characters); training drops such texts, so there is nothing to predict")


def safe(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A short, always-encodable prefix: lone surrogates become `\\udXXX` escapes."""
    cut = text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def preview(value: Any) -> Any:
    """What an error answer may say about an input value: scalars as they are, strings cut,
    containers summarised (their content can be megabytes)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, bytes):
        return safe(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, dict):
        return f"<object with {len(value)} keys>"
    if isinstance(value, list | tuple):
        return f"<array of {len(value)} items>"
    return safe(repr(value))


def problem(loc: Sequence[Any], msg: str, type_: str, value: Any) -> dict[str, Any]:
    """One error entry in FastAPI's shape, safe to encode and short."""
    return {"loc": [p if isinstance(p, int) else safe(str(p)) for p in loc],
            "msg": safe(msg, DETAIL_CHARS), "type": safe(type_), "input": preview(value)}


def unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    """A 422 listing at most MAX_ERRORS errors (and how many there were)."""
    return JSONResponse({"detail": errors[:MAX_ERRORS], "errors_total": len(errors)},
                        status_code=422)


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    """RequestValidationError -> the short, encodable 422 (replaces FastAPI's echoing one)."""
    assert isinstance(exc, RequestValidationError)
    return unprocessable([problem(e.get("loc", ()), str(e.get("msg", "")),
                                  str(e.get("type", "")), e.get("input"))
                          for e in exc.errors()])


async def http_error_handler(_: Request, exc: Exception) -> Response:
    """HTTPException -> its JSON answer with the detail cut and made encodable: a detail that
    quotes user input (an unknown key, a label) must not echo megabytes or a lone surrogate."""
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    detail = (safe(exc.detail, DETAIL_CHARS) if isinstance(exc.detail, str)
              else preview(exc.detail))
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


def install(app: FastAPI) -> None:
    """Short, encodable answers for every request-validation and HTTP error of the app."""
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)


def check_texts(texts: list[str], loc: list[Sequence[Any]], cfg: TextConfig,
                blank: Any) -> tuple[LimitResult, list[dict[str, Any]]]:
    """Apply the shared length policy and the empty-after-normalisation rule to request texts.

    `loc[i]` names text i in the request; `blank(text) -> bool` is the served model's rule.
    Returns the texts to predict (truncated where the policy says so) and the 422 errors
    (refused overlong texts, blank texts); no errors means every text can be answered."""
    limited = apply_text_limit(texts, cfg)
    errors = [problem(loc[i], overlong_message(n, cfg), "text_too_long", texts[i])
              for i, n in zip(limited.refused, limited.lengths)]
    refused = set(limited.refused)
    errors += [problem(loc[i], EMPTY_MSG, "empty_text", t)
               for i, t in enumerate(limited.texts) if i not in refused and blank(t)]
    return limited, errors
