"""The view stage: one shared state per session, one thin Viewer per page, the app shell.

:mod:`~neuromapper.views.state` (the state every view shares), :mod:`~neuromapper.views.run`
(the run as the views read it), :mod:`~neuromapper.views.jobs` (server-wide reductions and
run watcher), :mod:`~neuromapper.views.embedding_painter` and :mod:`~neuromapper.views.embedding`
(the Embeddings page), :mod:`~neuromapper.views.shell` (template, pages, player).
"""
