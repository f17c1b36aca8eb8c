"""`geeps run`: a whole job as local processes.

`launcher` is the command line; `plan` turns a job and the local options into the
processes to start (pure: a LaunchPlan); `supervise` starts them, restarts them by the
job's run policy (geeps.job.exits) and shows their progress, which `board` adds up
(pure).
"""
from geeps.launch.launcher import main

__all__ = ["main"]
