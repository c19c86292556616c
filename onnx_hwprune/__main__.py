import sys

from onnx_hwprune.cli import main

sys.exit(main())
