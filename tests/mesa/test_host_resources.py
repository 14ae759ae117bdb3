"""What an agent offers: Mesos's reserves, and operator strings completed by detection."""

from __future__ import annotations

import os

import pytest

from mesa.host_resources import detect_resources, disk_mb, memory_mb, resolve_resources
from mesa.resources import ResourceError

GB = 1024**3


def test_memory_reserve_is_1gb_or_half():
    assert memory_mb(16 * GB) == 15 * 1024
    assert memory_mb(2 * GB) == 1024
    assert memory_mb(1 * GB) == 512


def test_disk_reserve_is_5gb_or_half(tmp_path):
    assert disk_mb(tmp_path, 100 * GB) == 95 * 1024
    assert disk_mb(tmp_path, 4 * GB) == 2 * 1024


def test_detection(tmp_path):
    r = detect_resources(tmp_path / "not" / "there" / "yet")
    assert r.scalar("cpus") == os.cpu_count()
    assert r.scalar("mem") > 0 and r.scalar("disk") > 0
    assert r.ranges("ports") == ((31000, 32000),)


def test_given_names_win_and_the_rest_is_detected(tmp_path):
    r = resolve_resources("cpus:0.5;gpus:1", tmp_path)
    assert r.scalar("cpus") == 0.5 and r.scalar("gpus") == 1
    assert r.scalar("mem") > 0 and r.ranges("ports") == ((31000, 32000),)
    full = "cpus:2;mem:1024;disk:4096;ports:[31000-32000]"
    assert str(resolve_resources(full, tmp_path)) == full
    with pytest.raises(ResourceError):
        resolve_resources("cpus:lots", tmp_path)
