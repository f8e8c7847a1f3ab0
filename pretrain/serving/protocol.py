"""The request body of `POST /v1/predict`, checked: `{"texts": [str, ...]}` or
`{"pairs": [[str, str], ...]}`. Every mistake is a `RequestError` with the HTTP status and one
line naming the problem (400 malformed, 413 too many items)."""

from __future__ import annotations

import json
from typing import Any

from pretrain.serving.inputs import Item


class RequestError(Exception):
    """A request the server refuses: `status` and a one-line `reason`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_predict(body: bytes, accepts: tuple[str, ...], max_items: int) -> list[Item]:
    """The items of a request body (see the module docstring)."""
    try:
        request = json.loads(body)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"the body is not JSON ({e.msg} at character {e.pos}).") from None
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 text.") from None
    fields = " or ".join(f'"{f}"' for f in accepts)
    if not isinstance(request, dict) or len(request) != 1 or next(iter(request)) not in accepts:
        raise RequestError(400, f"the body must be a JSON object with one field, {fields}.")
    field, values = next(iter(request.items()))
    if not isinstance(values, list) or not values:
        raise RequestError(400, f'"{field}" must be a non-empty list.')
    if len(values) > max_items:
        raise RequestError(
            413, f"{len(values)} {field} in one request; the limit is {max_items}: split it."
        )
    return [_item(field, i, v) for i, v in enumerate(values)]


def _item(field: str, i: int, value: Any) -> Item:
    if field == "texts":
        if not isinstance(value, str):
            raise RequestError(400, f"texts[{i}] is {type(value).__name__}, not a string.")
        return value
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise RequestError(400, f"pairs[{i}] must be a list of two strings.")
    return (value[0], value[1])
