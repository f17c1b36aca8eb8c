"""Errors a client raises; each names the server it concerns."""


class GeepsError(RuntimeError):
    """Base of every geeps runtime error."""


class ServerError(GeepsError):
    """A server refused a request (its reply said why)."""


class ServerUnreachable(GeepsError, TimeoutError):
    """A server stayed silent longer than the client's timeout."""


class WaitTimeout(GeepsError, TimeoutError):
    """A read stayed parked longer than the wait timeout (a worker far behind?)."""
