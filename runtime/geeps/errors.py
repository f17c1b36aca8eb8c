"""Errors a client raises; each names the server it concerns."""


class GeepsError(RuntimeError):
    """Base of every geeps runtime error."""


class ServerError(GeepsError):
    """A server refused a request (its reply said why)."""


class Resplit(ServerError):
    """The rows of a request now lie in several segments of a newer membership (servers
    were added, removed or failed over while it was in flight): make it again, and the
    client splits it along the segments it knows now."""


class ServerUnreachable(GeepsError, TimeoutError):
    """A server stayed silent longer than the client's timeout."""


class WaitTimeout(GeepsError, TimeoutError):
    """A read stayed parked longer than the wait timeout (a worker far behind?)."""


class RolledBack(GeepsError):
    """A server restarted from a checkpoint and the job rolled back to `clock`.

    The calls in flight were dropped; the client's clock is now `clock`. Resume the
    training loop from there (data position included):

        while client.clock_value < total:
            try:
                step(client.clock_value)
            except geeps.RolledBack:
                pass        # the loop resumes at the new clock_value
    """

    def __init__(self, clock: int, why: str):
        super().__init__(f"rolled back to clock {clock}: {why}")
        self.clock = clock
