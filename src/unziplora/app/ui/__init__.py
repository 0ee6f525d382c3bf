"""`unziplora ui`: a local web page (Gradio) over the Python API: upload, decompose with live
progress, generate, download, the runs list.

    runs.py    the runs folder: safe run names, the runs list, interrupted runs to resume
    jobs.py    the background worker: one job at a time per process, a queue, cancel
    tasks.py   what a button asks for, checked at once, then queued as a call of the API
    page.py    the events' handlers and the progress the timer streams
    layout.py  the components and their wiring
    app.py     `serve`: 127.0.0.1, no share link, capped uploads, files served from the runs folder only
"""

from .app import serve

__all__ = ["serve"]
