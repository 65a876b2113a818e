"""Event ids: drawn without a system call (see ``new_id``), and still unique across forked processes."""

from __future__ import annotations

import os
import uuid

from infra.events import ReviewRequest, new_id


def test_ids_are_uuid4_hex_and_do_not_repeat():
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(hex=ids[0])
    assert len(ids[0]) == 32 and parsed.version == 4 and parsed.hex == ids[0]
    assert ReviewRequest(classifier="c", text="t", predicted_label="a", source="user_feedback").event_id != ids[-1]


def test_a_forked_child_draws_other_ids_than_its_parent():
    """A replica forked by a process manager (gunicorn, multiprocessing's fork) must not repeat its
    parent's ids: the generator is reseeded in the child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit without pytest's teardown
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode()
    os.waitpid(pid, 0)
    child = {data[i:i + 32] for i in range(0, len(data), 32)}
    parent = {new_id() for _ in range(100)}
    assert len(child) == 100 and not child & parent
