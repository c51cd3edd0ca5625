import sys

from parttok.cli import main

sys.exit(main())
