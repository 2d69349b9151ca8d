"""The route matcher (Monolake/matchit semantics) and route validation in configs."""

from __future__ import annotations

import pytest

from monolake.conf import Router, RouteSpec
from monolake.conf.routes import RouteConflictError

from .conf_samples import HTTP_SERVER, Load, Problems


def router(*paths: str, **kw: str) -> Router:
    return Router([RouteSpec(path=p) for p in paths])


def test_static_beats_param_beats_catch_all() -> None:
    r = router("/{*rest}", "/a/{x}", "/a/b")
    assert r.match("/a/b") == (2, {})
    assert r.match("/a/c") == (1, {"x": "c"})
    assert r.match("/a/b/c") == (0, {"rest": "a/b/c"})
    assert r.match("/z") == (0, {"rest": "z"})


def test_matching_is_exact() -> None:
    r = router("/api", "/users/{id}")
    assert r.match("/api") == (0, {})
    assert r.match("/api/") is None  # no trailing-slash redirect
    assert r.match("/api/x") is None  # no prefix match
    assert r.match("/users/7") == (1, {"id": "7"})
    assert r.match("/users/") is None  # a parameter is never empty
    assert r.match("/users/7/x") is None
    assert r.match("*") is None


def test_catch_all_needs_a_non_empty_rest() -> None:
    r = router("/{*p}", "/files/{*path}")
    assert r.match("/") is None
    assert r.match("/files/") == (0, {"p": "files/"})  # backtracks to the root catch-all
    assert router("/files/{*path}").match("/files/") is None
    assert r.match("/files/a/b.txt") == (1, {"path": "a/b.txt"})
    assert r.match("/files") == (0, {"p": "files"})


def test_backtracking_to_a_parameter_branch() -> None:
    r = router("/a/b/c", "/a/{x}/d")
    assert r.match("/a/b/d") == (1, {"x": "b"})
    assert r.match("/a/b/c") == (0, {})


def test_params_and_catch_all_together() -> None:
    r = router("/v1/{tenant}/objects/{*key}")
    assert r.match("/v1/acme/objects/x/y") == (0, {"tenant": "acme", "key": "x/y"})


@pytest.mark.parametrize(
    "a, b",
    [
        ("/a/{x}", "/a/{y}"),
        ("/a/{x}/b", "/a/{y}/c"),
        ("/a/b", "/a/b"),
        ("/a/{*x}", "/a/{*y}"),
        ("/{x}", "/{x}"),
    ],
)
def test_conflicts(a: str, b: str) -> None:
    with pytest.raises(RouteConflictError) as info:
        router(a, b)
    (problem,) = info.value.problems
    assert problem.index == 1 and problem.key == "path"
    assert "routes[0]" in problem.message


@pytest.mark.parametrize(
    "paths",
    [
        ("/a/{x}/b", "/a/{x}/c"),
        ("/a", "/a/"),
        ("/{x}", "/{*y}"),
        ("/a/b", "/a/{x}", "/{*r}"),
    ],
)
def test_no_conflict(paths: tuple[str, ...]) -> None:
    router(*paths)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("a/b", 'starting with "/"'),
        ("/a/{*rest}/b", "only as the last segment"),
        ("/a/x{id}", "a whole segment"),
        ("/a/{}", "parameter name"),
        ("/{a}/{a}", "distinct parameter names"),
        ("/a?x=1", "without ?query"),
    ],
)
def test_bad_patterns(path: str, expected: str) -> None:
    _, problems = Router.compile([RouteSpec(path=path)])
    (problem,) = problems
    assert expected in problem.message and path in problem.message


def test_hosts_first_then_hostless_routes() -> None:
    r = Router(
        [
            RouteSpec(path="/"),
            RouteSpec(path="/", host="a.example"),
            RouteSpec(path="/only-a", host="A.Example"),
        ]
    )
    assert r.match("/", "a.example") == (1, {})
    assert r.match("/", "A.EXAMPLE:8080") == (1, {})
    assert r.match("/", "b.example") == (0, {})
    assert r.match("/", None) == (0, {})
    assert r.match("/only-a", "a.example.") == (2, {})
    assert r.match("/only-a", "b.example") is None


def test_ipv6_host_header() -> None:
    r = Router([RouteSpec(path="/", host="::1"), RouteSpec(path="/")])
    assert r.match("/", "[::1]:8080") == (0, {})
    assert r.match("/", "[::2]") == (1, {})


def test_path_prefix_after_path_routes_longest_first() -> None:
    r = Router(
        [
            RouteSpec(path_prefix="/api"),
            RouteSpec(path_prefix="/api/v2/"),
            RouteSpec(path="/api/health"),
            RouteSpec(path_prefix="/"),
        ]
    )
    assert r.match("/api/health") == (2, {})
    assert r.match("/api") == (0, {})
    assert r.match("/api/x") == (0, {})
    assert r.match("/api/v2") == (1, {})
    assert r.match("/api/v2/users") == (1, {})
    assert r.match("/apix") == (3, {})  # segment boundary, so only "/" matches
    assert r.match("/") == (3, {})


def test_duplicate_prefix_conflicts_but_not_across_hosts() -> None:
    with pytest.raises(RouteConflictError):
        Router([RouteSpec(path_prefix="/api"), RouteSpec(path_prefix="/api/")])
    Router([RouteSpec(path_prefix="/api"), RouteSpec(path_prefix="/api", host="x.example")])


# -- in configs ----------------------------------------------------------------------------------


def route(path_line: str, extra: str = "") -> str:
    return (
        f"[[servers.web.routes]]\n{path_line}\n{extra}\n"
        'upstreams = [{ endpoint = { type = "builtin", value = "echo" } }]\n'
    )


def test_conflicting_routes_in_a_config(problems: Problems) -> None:
    text = (
        HTTP_SERVER.replace('path = "/"', 'path = "/a/{x}"')
        + route('path = "/a/{y}"')
        + route('path = "/a/{x}"')
    )
    lines = problems(text)
    line = next(x for x in lines if ": servers.web.routes[1].path: " in x)
    assert "{x}" in line and "{y}" in line and "servers.web.routes[0]" in line
    assert any(": servers.web.routes[2].path: " in x and "servers.web.routes[0]" in x for x in lines)


def test_same_path_with_different_hosts_is_fine(load: Load) -> None:
    cfg = load(
        HTTP_SERVER + route('path = "/"', 'host = "a.example"') + route('path = "/"', 'host = "b.example"')
    )
    assert [r.host for r in cfg.servers["web"].routes] == [None, "a.example", "b.example"]


def test_path_and_prefix_are_exclusive_and_one_is_required(problems: Problems) -> None:
    lines = problems(HTTP_SERVER + route('path = "/x"', 'path_prefix = "/x"') + route("", ""))
    assert any(
        ": servers.web.routes[1].path_prefix: expected either path or path_prefix, found both" in x
        for x in lines
    )
    assert any(": servers.web.routes[2].path: " in x and "found neither" in x for x in lines)


def test_route_host_and_methods_checked(problems: Problems) -> None:
    lines = problems(HTTP_SERVER + route('path = "/x"', 'host = "a.example:80"\nmethods = ["ping"]'))
    assert any(": servers.web.routes[1].host: " in x and "without port" in x for x in lines)
    assert any(": servers.web.routes[1].methods: " in x and "thrift routes only" in x for x in lines)


def test_http_server_needs_routes(problems: Problems) -> None:
    text = HTTP_SERVER.split("[[servers.web.routes]]")[0]
    assert any(": servers.web.routes: expected at least one [[routes]]" in x for x in problems(text))
    assert any(": servers.web.routes: expected at least one" in x for x in problems(text + "routes = []\n"))
