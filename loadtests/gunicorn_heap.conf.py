"""project/gunicorn.conf.py, with each worker reporting what its memory is made of (loadtests/heap.py).

The soak starts its sites with this file and HEAP_REPORT_DIR set; nothing else differs.
"""

import runpy
from pathlib import Path

_project = runpy.run_path(str(Path(__file__).resolve().parent.parent / "project" / "gunicorn.conf.py"))
globals().update({name: value for name, value in _project.items() if not name.startswith("__")})


def post_worker_init(worker):
    from loadtests import heap

    heap.start_reporting()
