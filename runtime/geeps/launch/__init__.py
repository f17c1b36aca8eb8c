"""`geeps run`: a whole job as local processes.

`launcher` is the command line; `plan` turns a job and the local options into the
processes to start (pure); `supervise` starts them, restarts them by the job's run
policy, and draws the progress `board`.
"""
from geeps.launch.launcher import main

__all__ = ["main"]
