"""routes.toml parsing: only configured routes exist, every error names file and field."""

from __future__ import annotations

import pytest

from tether.catalog import load_catalog
from tether.errors import ConfigError
from tether.gateway.routes import load_routes, parse_routes

RULE = {
    "method": "GET",
    "path": "/repos/{owner}/{repo}/issues",
    "action": "http:read",
    "resource": "tickets.queue",
}


def doc(**route_over):
    route = {"prefix": "/gh", "upstream": "https://api.example.com", "service": "tickets", "rules": [RULE]}
    route.update(route_over)
    return {"routes": [route]}


def test_rule_captures_parameters():
    """`{name}` captures one segment; the rule matches method and path exactly."""
    table = parse_routes(doc())
    route, rest = table.find("/gh/repos/acme/api/issues")
    assert route.rules[0].match("GET", rest) == {"owner": "acme", "repo": "api"}
    assert route.rules[0].match("POST", rest) is None
    assert route.rules[0].match("GET", "/repos/acme/api/x/issues") is None


def test_path_rest_parameter():
    """`{name:path}` captures the rest of the path, only as the last segment."""
    table = parse_routes(doc(rules=[{**RULE, "path": "/files/{p:path}"}]))
    route, rest = table.find("/gh/files/a/b/c.txt")
    assert route.rules[0].match("GET", rest) == {"p": "a/b/c.txt"}
    with pytest.raises(ConfigError) as e:
        parse_routes(doc(rules=[{**RULE, "path": "/files/{p:path}/x"}]))
    assert e.value.details["field"] == "routes[0].rules[0].path"


def test_longest_prefix_wins_and_no_prefix_confusion():
    """`/gh-admin` is not under `/gh`; the longest matching prefix is chosen."""
    d = doc()
    d["routes"].append({**d["routes"][0], "prefix": "/gh/admin"})
    table = parse_routes(d)
    assert table.find("/gh-admin/x") is None
    assert table.find("/gh/admin/x")[0].prefix == "/gh/admin"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"upstream": "ftp://x"}, "routes[0].upstream"),
        ({"upstream": "https://user:pw@x"}, "routes[0].upstream"),
        ({"prefix": "gh"}, "routes[0].prefix"),
        ({"prefix": "/gh/"}, "routes[0].prefix"),
        ({"rules": []}, "routes[0].rules"),
        ({"rules": [{**RULE, "action": "root"}]}, "routes[0].rules[0].action"),
        ({"rules": [{**RULE, "method": "get"}]}, "routes[0].rules[0].method"),
        ({"rules": [{**RULE, "method": "CONNECT"}]}, "routes[0].rules[0].method"),
        ({"rules": [{**RULE, "path": "/a/../b"}]}, "routes[0].rules[0].path"),
        ({"rules": [{**RULE, "extra": 1}]}, "routes[0].rules[0].extra"),
        ({"headers": {"Authorization": "x"}}, "routes[0].headers"),
        ({"headers": {"X-A": "a\r\nb"}}, "routes[0].headers"),
        ({"surprise": True}, "routes[0].surprise"),
    ],
)
def test_invalid_route_names_field(over, field):
    """Each invalid field is refused with a `config_invalid` naming it."""
    with pytest.raises(ConfigError) as e:
        parse_routes(doc(**over), "routes.toml")
    assert (e.value.code, e.value.details["field"]) == ("config_invalid", field)


def test_invalid_gateway_options_name_field():
    """Gateway options are range-checked and unknown ones refused."""
    for options, field in (
        ({"timeout_seconds": 0}, "gateway.timeout_seconds"),
        ({"max_request_bytes": "big"}, "gateway.max_request_bytes"),
        ({"nope": 1}, "gateway.nope"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_routes({**doc(), "gateway": options})
        assert e.value.details["field"] == field


def test_duplicate_prefix_refused():
    """Two routes on one prefix are refused."""
    d = doc()
    d["routes"].append(d["routes"][0])
    with pytest.raises(ConfigError) as e:
        parse_routes(d)
    assert e.value.details["field"] == "routes[1].prefix"


def test_resources_checked_against_catalog(tmp_path):
    """A rule naming a resource of another service (or none) is refused at start."""
    from tether.runtime import init_state_dir

    init_state_dir(tmp_path)
    catalog = load_catalog(tmp_path / "catalog.yaml")
    parse_routes(doc()).check_catalog(catalog)
    with pytest.raises(ConfigError) as e:
        parse_routes(doc(rules=[{**RULE, "resource": "billing.refund"}])).check_catalog(catalog)
    assert e.value.details["field"] == "routes[0].rules[0].resource"


def test_example_routes_file_parses():
    """The shipped example routes file is valid."""
    from pathlib import Path

    table = load_routes(Path(__file__).parents[2] / "examples" / "gateway" / "routes.toml")
    assert table.routes


def test_unreadable_routes_file(tmp_path):
    """A missing or non-TOML file is a `config_invalid` naming the file."""
    with pytest.raises(ConfigError):
        load_routes(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[[routes]\n")
    with pytest.raises(ConfigError):
        load_routes(tmp_path / "bad.toml")
