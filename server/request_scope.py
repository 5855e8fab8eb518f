"""What every front end (gRPC, HTTP) does around one counted request, protocol-neutral: refuse it
while the server loads or drains (Unavailable, raised before the request is counted in flight,
so a drain never waits for requests it refuses), count it in flight, and observe its request
metrics (the outcome's gRPC status name as the code for both protocols, and the protocol).

A front end wraps its handler in request_scope and turns what escapes it into its own status:

    with request_scope(plane, GRPC, "ModelInfer") as call:
        return await handle(request, call)   # the data plane labels `call` with the model
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from time import perf_counter

from .dataplane import Call, DataPlane
from .errors import ServingError, Unavailable

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP = "http"


def _cancelled() -> str:
    return "CANCELLED"


@contextlib.contextmanager
def request_scope(
    plane: DataPlane, protocol: str, api: str, cancelled_code: Callable[[], str] = _cancelled
) -> Iterator[Call]:
    """`cancelled_code`: the code of a request cancelled under the block (a gRPC deadline that
    passed is DEADLINE_EXCEEDED). Exceptions propagate unchanged once counted; an unexpected
    one is logged with its traceback and counted INTERNAL."""
    metrics = plane.metrics
    start = perf_counter()
    refusal = plane.refusal()
    if refusal is not None:
        metrics.observe_request("", "", api, Unavailable.code.name, perf_counter() - start, protocol=protocol)
        raise Unavailable(refusal)
    call = Call()
    code = "OK"
    with plane.in_flight(call):
        try:
            yield call
        except ServingError as exc:
            code = exc.code.name
            raise
        except asyncio.CancelledError:
            code = cancelled_code()
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("%s (%s) failed", api, protocol)
            raise
        finally:
            # Counted before the front end sends the status: a client that sees it sees it counted.
            metrics.observe_request(call.model, call.version, api, code, perf_counter() - start, protocol=protocol)
