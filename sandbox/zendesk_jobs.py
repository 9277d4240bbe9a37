"""Zendesk bulk endpoints run as background jobs: submit, then poll ``job_statuses``.

A bulk call only queues work (200 + ``job_status`` "queued"); the records exist once the
job has run. Here a job answers "working" on its first poll and runs on the second, or
on any request a second after it was queued, so a sink that never polls still sees its
tickets, and a sink that reads results before completion sees ``results: null``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sandbox.wire import Response, json_response
from sandbox.zendesk_store import ZendeskError, ZendeskStore

JSON = "application/json; charset=UTF-8"
MAX_BULK = 100
RUN_AFTER_SECONDS = 1.0


@dataclass
class Job:
    id: str
    kind: str  # tickets | users | delete_tickets
    items: list[Any]
    queued: float
    polls: int = 0
    status: str = "queued"
    results: list[dict[str, Any]] | None = None
    finished: float | None = None


class JobQueue:
    def __init__(self, store: ZendeskStore) -> None:
        self.store = store
        self.jobs: dict[str, Job] = {}

    def submit(self, kind: str, items: Any, now: float) -> Response:
        if not isinstance(items, list):
            wrong = {"error": "InvalidParameter", "description": f"{kind} must be an array"}
            raise ZendeskError(400, wrong)
        if len(items) > MAX_BULK:
            # Recorded body, including the double space where the parameter name belongs.
            body: dict[str, Any] = {
                "error": "TooManyValues",
                "description": "Parameter  cannot specify more than 100 values",
                "max_count": MAX_BULK,
            }
            raise ZendeskError(400, body)
        job = Job(f"V3-{self.store.rng.getrandbits(128):032x}", kind, list(items), now)
        self.jobs[job.id] = job
        return json_response(200, {"job_status": self.payload(job)}, content_type=JSON)

    def poll(self, job_id: str, now: float) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            raise ZendeskError(404, {"error": "RecordNotFound", "description": "Not found"})
        job.polls += 1
        if job.status == "queued" and job.polls == 1 and now - job.queued < RUN_AFTER_SECONDS:
            job.status = "working"
        elif job.status in ("queued", "working"):
            self._run(job, now)
        return json_response(200, {"job_status": self.payload(job)}, content_type=JSON)

    def advance(self, now: float) -> None:
        for job in self.jobs.values():
            if job.status in ("queued", "working") and now - job.queued >= RUN_AFTER_SECONDS:
                self._run(job, now)

    def _run(self, job: Job, now: float) -> None:
        results: list[dict[str, Any]] = []
        for index, item in enumerate(job.items):
            try:
                if job.kind == "delete_tickets":
                    # Permanent deletion of a soft-deleted ticket; result shape unverified.
                    if self.store.deleted_tickets.pop(int(item), None) is None:
                        raise ZendeskError(
                            404, {"error": "RecordNotFound", "description": "Not found"}
                        )
                    results.append({"index": index, "id": int(item), "success": True})
                elif job.kind == "tickets":
                    ticket, _ = self.store.create_ticket(item, now)
                    results.append({"index": index, "id": ticket.id, "account_id": 1})
                    if ticket.external_id is not None:
                        results[-1]["external_id"] = ticket.external_id
                else:
                    user, created = self.store.create_or_update_user(item, now)
                    results.append(
                        {
                            "index": index,
                            "id": user.id,
                            "status": "Created" if created else "Updated",
                            "external_id": user.external_id,
                            "email": user.email,
                        }
                    )
            except ZendeskError as exc:
                details = exc.body.get("details")
                text = exc.body.get("description", "")
                if isinstance(details, dict):
                    text = "; ".join(
                        str(d.get("description", "")) for v in details.values() for d in v
                    )
                results.append({"index": index, "error": exc.body["error"], "details": text})
        job.results, job.status, job.finished = results, "completed", now

    def payload(self, job: Job) -> dict[str, Any]:
        total = len(job.items)
        progress = {"queued": None, "working": total // 2}.get(job.status, total)
        message = None
        if job.finished is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(job.finished))
            message = f"Completed at {stamp}"
        return {
            "id": job.id,
            "url": f"{self.store.base_url}/api/v2/job_statuses/{job.id}.json",
            "total": total,
            "progress": progress,
            "status": job.status,
            "message": message,
            "results": job.results,
        }

    def state(self) -> list[dict[str, Any]]:
        return [self.payload(job) for job in self.jobs.values()]
