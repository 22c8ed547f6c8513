"""The shared test zoo: built once per source version, reused by every test package.

Use the ``zoo_dir`` fixture (tests/conftest.py), or call ``test_zoo_dir()`` directly. The zoo is
the "test" profile of ``testbed.zoo``: ``trimcache-zoo/minilm-base``, ``bert-sst2`` (the real
recipe), ``bert-spam`` (3 frozen layers), ``bert-question`` (nothing frozen) and the LoRA adapter
``minilm-lora-topic``. It lives in ``.cache/zoo-test/<key>`` and a file lock lets parallel
pytest-xdist workers share one build (about a minute on an idle 2-core machine).
"""

from __future__ import annotations

from pathlib import Path

from testbed.zoo import ensure_test_zoo


def test_zoo_dir() -> Path:
    """Directory of the built test zoo (``zoo.json`` + ``repos/<org>/<name>``)."""
    return ensure_test_zoo()


# Not a test, even when imported into a test module.
test_zoo_dir.__test__ = False  # type: ignore[attr-defined]
