"""The NeuroMapper dashboard for ``panel serve``.

    panel serve --rest-session-info --session-history -1 dashboards/dashboard.py --show --args data/demo

Each browser session runs this script and gets its own app (its own state), released when the
session closes. The argument is a run, or a folder of runs (a chooser appears). The file is not
called ``neuromapper.py``: ``panel serve`` (and a notebook kernel started here) put this folder
first on ``sys.path``, where a ``neuromapper.py`` would shadow the ``neuromapper`` package.
"""

import sys

import panel as pn

from neuromapper.views.shell import EXTENSIONS, serve_app

pn.extension(*EXTENSIONS, notifications=True)

serve_app(sys.argv[1] if len(sys.argv) > 1 else "data/demo").servable()
