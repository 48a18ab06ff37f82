"""``raymesh verify``: is a mesh dir complete and sound? One exit status, and a report naming each
problem by layer, chunk and node, which ``raymesh mesh --repair`` takes to redo exactly those.

``geometry`` holds the pure mesh checks, ``checks`` the per-chunk, per-root and metadata checks,
``runner`` runs them on an executor, ``report`` writes JSON and HTML.
"""
