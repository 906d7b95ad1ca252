import sys

from cened.cli import main

sys.exit(main())
