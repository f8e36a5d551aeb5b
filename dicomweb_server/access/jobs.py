"""The access context's background work: the audit trail's writer (access/audit.py).

``JOBS`` is merged by ``app.py`` with the other contexts' and run by ``jobs.runner``.
"""

from __future__ import annotations

from dicomweb_server.access.audit import AuditTrail
from dicomweb_server.jobs.runner import Job, Parts, Processor


def audit_writer(parts: Parts) -> Job:
    """Append the queued audit rows in batches, woken by the first row of each."""
    return parts.get(AuditTrail).job()


JOBS: dict[str, Processor] = {"audit.flush": audit_writer}
