"""``python -m geventcomet serve``: the same as the ``geventcomet`` command."""
import sys

from geventcomet.cli import main

sys.exit(main())
