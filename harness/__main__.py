"""`python -m harness` is the `pgolf` command."""
import sys

from harness.cli import main

sys.exit(main())
