"""``python -m arrowpool server ...`` runs the server, ``python -m arrowpool start``
starts this user's server if none runs, anything else runs the ``arrowpool`` tool
(``ls``, ``stats``, ``ingest``, ``stop``...). See :mod:`arrowpool.server`."""

import sys

from .server import main

sys.exit(main())
