"""Ids: unique version-4 UUIDs, made without a syscall each, and never repeated by a fork."""

from __future__ import annotations

import os
import uuid

from mesa.info import new_id, new_uuid, new_uuid_bytes


def test_uuids_are_unique_and_version_4():
    texts = {new_uuid() for _ in range(5000)}
    raws = {new_uuid_bytes() for _ in range(5000)}
    assert len(texts) == len(raws) == 5000
    for text in list(texts)[:500]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122) and str(parsed) == text
    for raw in list(raws)[:500]:
        parsed = uuid.UUID(bytes=raw)
        assert len(raw) == 16 and (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    assert new_id("A-").startswith("A-") and uuid.UUID(new_id("A-")[2:]).version == 4


def test_a_forked_child_does_not_repeat_its_parent_s_ids():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, new_uuid().encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 100).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert uuid.UUID(child).version == 4
    assert child != new_uuid()
