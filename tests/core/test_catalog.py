"""Catalog parsing: attributes, inheritance and errors that name the entry."""

from __future__ import annotations

import pytest

from tether.catalog import parse_catalog
from tether.errors import ConfigError
from tether.model import Grant

DOC = {
    "intents": {"support.triage": "triage"},
    "services": [
        {
            "id": "crm",
            "sensitivity": "confidential",
            "environment": "prod",
            "egress": "internal",
            "owner": "team",
        }
    ],
    "tools": [{"id": "crm.lookup", "service": "crm"}],
    "datasets": [{"id": "crm.customers", "service": "crm", "sensitivity": 3}],
}


def test_children_inherit_service_attributes():
    """A tool without its own sensitivity inherits the service's; a dataset may raise it."""
    cat = parse_catalog(DOC)
    assert cat.get("crm.lookup").sensitivity == 2 and cat.get("crm.customers").sensitivity == 3
    assert cat.get("crm.lookup").cedar_entity()["parents"] == [{"type": "Tether::Service", "id": "crm"}]


def test_service_grant_covers_only_its_children():
    """A grant on a service covers its tools and datasets and nothing else."""
    cat = parse_catalog(DOC)
    assert cat.grant_within(Grant("read", "crm.customers"), [Grant("read", "crm")])
    assert not cat.grant_within(Grant("write", "crm.customers"), [Grant("read", "crm")])
    assert not cat.grant_within(Grant("read", "crm"), [Grant("read", "crm.customers")])


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"services": [{"id": "a", "sensitivity": 7}]}, "sensitivity"),
        ({"services": [{"id": "a", "egress": "sideways"}]}, "egress"),
        ({"tools": [{"id": "t", "service": "ghost"}]}, "ghost"),
        ({"services": [{"id": "a"}, {"id": "a"}]}, "duplicate"),
        ({"services": [{"id": "a'; DROP TABLE x;--"}]}, "invalid id"),
        ({"services": [{"id": "a", "colour": "red"}]}, "colour"),
        ({"widgets": []}, "widgets"),
    ],
)
def test_invalid_catalog_names_the_entry(doc, needle):
    """Invalid entries are refused with `catalog_invalid` and a message naming the entry."""
    with pytest.raises(ConfigError) as exc:
        parse_catalog(doc, "catalog.yaml")
    assert exc.value.code == "catalog_invalid" and needle in exc.value.message
