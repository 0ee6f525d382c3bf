"""`python -m unziplora ...`, as `accelerate launch -m unziplora batch ...` runs it."""

import sys

from .app.cli import main

sys.exit(main())
