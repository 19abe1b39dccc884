import sys

from paperzoo.cli import main

sys.exit(main())
