"""The NeuroMapper dashboard for ``panel serve``.

    panel serve --rest-session-info --session-history -1 dashboards/dashboard.py --show --args data/demo

Each browser session runs this script and gets its own viewer (its own state). The file is not
called ``neuromapper.py``: ``panel serve`` (and a notebook kernel started here) put this folder
first on ``sys.path``, where a ``neuromapper.py`` would shadow the ``neuromapper`` package.
"""

import sys

import panel as pn

from neuromapper.app import NeuroMapper

pn.extension(notifications=True)

run = sys.argv[1] if len(sys.argv) > 1 else "data/demo"
NeuroMapper(run).template().servable()
