"""What the examples share that is not part of the parameter server: the readers and
generators of their datasets (`datasets`). Installed beside geeps so that an example's
train.py imports it from any directory; the runtime library never imports it."""
