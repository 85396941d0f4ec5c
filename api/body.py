"""Reading a request body as JSON, strictly: the bytes are UTF-8 or the body is refused.

Every API body is JSON in UTF-8 (RFC 8259), declared as application/json, which
core.request_guard checks before anything reads the body (415 otherwise). Python's
json would also take UTF-16 and UTF-32 bytes; here undecodable bytes, and nesting
too deep for the parser, are 400s that say so. ninja wraps whatever this raises
into a 400 "Cannot parse request body"; api.errors reads the cause back out.
"""

import json
from typing import Any

from django.http import HttpRequest
from ninja.parser import Parser


class UnreadableBody(Exception):
    """The body's bytes cannot be read as the JSON it claims to be (answer 400)."""


class JsonOnlyParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableBody("the body is not valid UTF-8") from None
        try:
            return json.loads(text)
        except RecursionError:
            raise UnreadableBody("the body's JSON is nested too deeply") from None
