"""`geeps run` with fake_server.py standing in for `geeps server` (same arguments)."""
import os
import sys

from geeps.launch import launcher

here = os.path.dirname(os.path.abspath(__file__))
sys.exit(launcher.run(sys.argv[1:],
                      server_command=[sys.executable, os.path.join(here, "fake_server.py")]))
