"""TrimCache client SDK: fetch a model's blocks from nearby edge nodes, rebuild it, run it.

>>> from client import fetch_model
>>> model = fetch_model("bert-sst2")  # doctest: +SKIP
>>> model.predict(["I loved it"])[0]["label"]  # doctest: +SKIP
'positive'

The public surface is re-exported here; the modules behind it are private (``client._*``).
``import client`` does not import torch or transformers (they load with the first model).
"""

from ._cache import CachedModel, DeviceCache, DiskUsage, ModelDiskUsage
from ._client import Client, FetchProgress, fetch_model, resolve_settings
from ._download import DownloadOptions
from ._errors import (
    BlockIntegrityError,
    BlockNotFoundError,
    ClientError,
    ControllerUnavailableError,
    DiskFullError,
    EdgeUnavailableError,
    ModelNotFoundError,
    NoSourceError,
    raise_for_error,
)
from ._model import FetchedModel, Prediction

__all__ = [
    "BlockIntegrityError",
    "BlockNotFoundError",
    "CachedModel",
    "Client",
    "ClientError",
    "ControllerUnavailableError",
    "DeviceCache",
    "DiskFullError",
    "DiskUsage",
    "DownloadOptions",
    "EdgeUnavailableError",
    "FetchProgress",
    "FetchedModel",
    "ModelDiskUsage",
    "ModelNotFoundError",
    "NoSourceError",
    "Prediction",
    "fetch_model",
    "raise_for_error",
    "resolve_settings",
]
