"""The transactional outbox: what changed, written in the change's own transaction (DESIGN.md)."""

from dicomweb_server.events.outbox import INSTANCE_STORED, Event, InstanceStored, append, latest, read

__all__ = ["INSTANCE_STORED", "Event", "InstanceStored", "append", "latest", "read"]
