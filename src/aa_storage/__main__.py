"""``python -m aa_storage`` is the ``aa-storage`` command."""

import sys

from aa_storage.cli import main

sys.exit(main())
