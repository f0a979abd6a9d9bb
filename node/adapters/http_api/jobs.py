"""``/api/v1/jobs``: submit, list, follow, cancel API jobs and fetch their results."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from pydantic import Field

from dgpu.node.adapters.http_api.context import ERRORS, Ctx, Protected, in_trio
from dgpu.node.services import api as svc
from dgpu.node.services.api.schema import ErrorOut, JobOut, JobsOut, LogsOut
from dgpu.node.services.renter import InputRefused, resolve_input

__all__ = ["jobs_router"]


def jobs_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], dependencies=Protected, responses=ERRORS)

    @router.post("", status_code=202, response_model=JobOut,
                 responses={429: {"model": ErrorOut, "description": "too many running API jobs"},
                            503: {"model": ErrorOut, "description": "no ledger configured (no_ledger): "
                                  "jobs cannot be paid for"}})
    async def submit(spec: svc.JobSpec, ctx: Ctx, response: Response) -> JobOut:
        """Submit a job: it is negotiated, funded on the ledger (escrow) and run in the background;
        poll its status. A node without a ledger refuses (503 ``no_ledger``); an input outside the
        node's input roots is refused (403 ``input_refused``)."""
        for local in spec.inputs.values():
            try:
                resolve_input(local, ctx.settings.input_roots)
            except InputRefused as exc:
                raise svc.Forbidden(str(exc), InputRefused.code) from None

        async def go() -> svc.ApiJob:
            return ctx.jobs.submit(spec)

        job = await in_trio(go)
        response.headers["location"] = f"/api/v1/jobs/{job.id}"
        return job.view()

    @router.get("", response_model=JobsOut)
    async def list_jobs(ctx: Ctx, state: svc.ApiJobState | None = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50,
                        offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> JobsOut:
        total, jobs = ctx.jobs.list_jobs(state=state, limit=limit, offset=offset)
        return JobsOut(total=total, jobs=[j.view(tail=0) for j in jobs])

    @router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
    async def status(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx) -> JobOut:
        return ctx.jobs.get(job_id).view()

    @router.get("/{job_id}/logs", response_model=LogsOut, responses={404: {"model": ErrorOut}})
    async def logs(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx,
                   since: Annotated[int | None, Query(ge=0)] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> LogsOut:
        """The last ``limit`` lines, or up to ``limit`` lines from ``since`` on."""
        return ctx.jobs.get(job_id).log_page(since, limit)

    @router.get("/{job_id}/result", response_class=FileResponse,
                responses={200: {"content": {"application/x-tar": {}}}, 404: {"model": ErrorOut},
                           409: {"model": ErrorOut}})
    async def result(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx) -> FileResponse:
        """The job's output folder as a tar (verified against the provider's content id), streamed."""
        job = ctx.jobs.get(job_id)
        if job.result_file is None or not job.result_file.is_file():
            raise svc.Conflict(f"job {job.id} has no result (it did not finish, or kept no outputs)",
                               "no_result")
        return FileResponse(job.result_file, media_type="application/x-tar", filename=f"{job.id}.tar")

    @router.post("/{job_id}/attach", status_code=202, response_model=JobOut,
                 responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 429: {"model": ErrorOut}})
    async def attach(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx) -> JobOut:
        """Follow a job again (by its id or its agreement id): the one running, or one this node
        kept when it went away, re-attached on the provider (logs from where it left off, the
        result, settlement as usual)."""
        async def go() -> svc.ApiJob:
            return await ctx.jobs.attach(job_id)

        return (await in_trio(go)).view()

    @router.delete("/{job_id}", status_code=202, response_model=JobOut,
                   responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}})
    async def cancel(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx) -> JobOut:
        """Cancel: the provider stops the job and the escrow is settled (unused minutes back)."""
        async def go() -> svc.ApiJob:
            return ctx.jobs.cancel(job_id)

        return (await in_trio(go)).view()

    return router
