"""The broker that needs nothing but Python: kombu's filesystem transport, with whole messages.

Settings select it for CELERY_BROKER_URL=filesystem://... (the default). kombu
creates a message's file under its final name and then writes into it; a worker
that lists the folder in between takes an empty file, fails to decode it and
stops ("Unrecoverable error: JSONDecodeError", celery/kombu#1551). Here a message
is written under a name no reader takes and renamed into place, which is atomic
within one file system.

One worker process per folder: a reader takes a message by moving it to the
system's temporary folder, which is a copy when that folder is on another file
system, so two workers could both take it. More workers: Redis
(CELERY_BROKER_URL=redis://..., as under compose).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put `payload` onto `queue`, visible to readers only once it is whole."""
        # kombu's own name: readers take messages in the order of their names.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        filename = os.path.join(self.data_folder_out, name)
        # No queue in the name: kombu before 5.7 takes any name that merely contains ".<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, filename)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
