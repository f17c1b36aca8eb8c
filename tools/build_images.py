"""Build geeps/operator and geeps/runtime with buildah (see geeps_sandbox.images):

    python tools/build_images.py [operator|runtime] [--variant cpu|cuda] [--base IMAGE]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "operator"))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "runtime"))

from geeps_sandbox.images import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
