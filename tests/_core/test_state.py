"""The request state: the header fields read once say what the header list says, always."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prodkit.asgi import (
    REQUEST_STATE_KEY,
    RequestHeaders,
    RequestState,
    Scope,
    get_all_headers,
    get_header,
    request_state,
    scope_header,
)

# Few names, so that lists often repeat one (several Origin or Forwarded field lines).
names = st.sampled_from([b"host", b"origin", b"x-user-id", b"forwarded", b"cache-control"])
header_lists = st.lists(st.tuples(names, st.binary(max_size=8)), max_size=8)


@given(raw=header_lists, name=names)
def test_the_fields_read_once_are_what_walking_the_list_finds(
    raw: list[tuple[bytes, bytes]], name: bytes
) -> None:
    fields = RequestHeaders.read(raw)
    assert fields.get(name) == get_header(raw, name)  # the first field line of a name
    assert fields.get_all(name) == get_all_headers(raw, name)  # every line, in order
    assert (name in fields) == (get_header(raw, name) is not None)


def test_a_layer_that_made_the_state_shares_it_with_the_layers_inside() -> None:
    scope: Scope = {"type": "http", "headers": [(b"host", b"api")], "root_path": "/v1"}
    state = request_state(scope)
    assert scope[REQUEST_STATE_KEY] is state
    assert request_state(scope) is state
    assert isinstance(state, RequestState)
    assert state.root_path == "/v1"  # as the outermost layer saw it, before any router


def test_headers_a_layer_in_between_adds_or_replaces_are_read_again() -> None:
    # An authenticating middleware between two prodkit layers may set the caller's header:
    # the layer inside must see it, not the fields the outer layer read.
    scope: Scope = {"type": "http", "headers": [(b"host", b"api")]}
    state = request_state(scope)
    assert scope_header(scope, b"x-user-id") is None
    scope["headers"].append((b"x-user-id", b"alice"))  # the same list, extended
    assert scope_header(scope, b"x-user-id") == b"alice"
    scope["headers"] = [(b"x-user-id", b"bob")]  # another list
    assert scope_header(scope, b"x-user-id") == b"bob"
    assert state.headers(scope) is state.headers(scope)  # unchanged since: read once
