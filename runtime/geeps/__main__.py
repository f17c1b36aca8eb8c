import sys

from geeps.cli import main

sys.exit(main())
