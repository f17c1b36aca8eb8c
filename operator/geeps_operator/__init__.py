"""The GeePSJob operator (kopf): `geeps operator`, see geeps_operator.main.

Pure parts: crd (the CRD, from geeps.job.spec), manifests (every child object), status and
policy (observed pods -> status and actions), rbac (the permissions). Parts that talk
to the API: kube (a small client), reconcile (read, decide, act), handlers (kopf
triggers), main (the command).
"""
