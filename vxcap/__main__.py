import sys

from vxcap.cli import main

sys.exit(main())
