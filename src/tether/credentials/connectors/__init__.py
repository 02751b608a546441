"""Connectors mint and revoke one kind of real credential (see ``base.Connector``)."""

from tether.credentials.connectors.base import Connector, Minted, MintRequest

__all__ = ["Connector", "MintRequest", "Minted"]
