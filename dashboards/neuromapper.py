"""The NeuroMapper dashboard for ``panel serve``.

    panel serve --rest-session-info --session-history -1 dashboards/neuromapper.py --show --args data/demo

Each browser session runs this script and gets its own viewer (its own state).
"""

import sys

import panel as pn

from neuromapper.app import NeuroMapper

pn.extension(notifications=True)

run = sys.argv[1] if len(sys.argv) > 1 else "data/demo"
NeuroMapper(run).template().servable()
