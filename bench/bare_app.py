"""A bare FastAPI endpoint, the yardstick `bench.submit` measures the submit path against.

    BARE_PORT=8001 python -m bench.bare_app

One POST route that validates a small pydantic body and answers 202 with JSON, served by one
uvicorn process with the same event loop and HTTP parser as `python -m app`. Its handler is a
plain `def`, as the service's submit route is, so both pay for the thread pool hop.
"""

import os
import uuid

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=2000)
    num_inference_steps: int | None = Field(None, ge=1)


class Accepted(BaseModel):
    id: str
    status: str
    request: Body


app = FastAPI()


@app.post("/v1/jobs", status_code=202, response_model=Accepted)
def submit(body: Body) -> Accepted:
    """Accept the body; nothing is stored."""
    return Accepted(id=uuid.uuid4().hex, status="queued", request=body)


def main() -> None:
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["BARE_PORT"]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
