"""Neutrino SDK: declare tasks and models with `App`, run them through an orchestrator with `Client`/`AsyncClient`.

The public surface is `__all__` below; everything else (modules starting with `_`) may change.
"""

from .aio import AsyncClient, AsyncTaskFuture
from .app import App
from .client import Client, TaskFuture
from .errors import (
    AddressError,
    AuthenticationError,
    BadArgumentsError,
    BusyError,
    CatalogNotReadyError,
    ClientClosedError,
    DrainingError,
    HandshakeError,
    InvalidRequestError,
    KeyFileError,
    ModelBusyError,
    ModelError,
    ModelInputError,
    NeutrinoError,
    NeutrinoTimeoutError,
    NotSupportedError,
    PayloadTooLargeError,
    ProtocolError,
    RejectedError,
    ResultEncodingError,
    ShuttingDownError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    UnavailableError,
    UnknownTaskError,
    WorkerDiedError,
)
from .models import Model
from .retry import Retry
from .task import Task

__all__ = [
    "AddressError",
    "App",
    "AsyncClient",
    "AsyncTaskFuture",
    "AuthenticationError",
    "BadArgumentsError",
    "BusyError",
    "CatalogNotReadyError",
    "Client",
    "ClientClosedError",
    "DrainingError",
    "HandshakeError",
    "InvalidRequestError",
    "KeyFileError",
    "Model",
    "ModelBusyError",
    "ModelError",
    "ModelInputError",
    "NeutrinoError",
    "NeutrinoTimeoutError",
    "NotSupportedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RejectedError",
    "ResultEncodingError",
    "Retry",
    "ShuttingDownError",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskFuture",
    "TaskTimeoutError",
    "UnavailableError",
    "UnknownTaskError",
    "WorkerDiedError",
]
