"""The service framework: services, factories, layers, stacks, contexts and state migration.

Modelled on Monolake's service-async: a service is built by a factory from its config *and the
previous version of itself*, which is how pools and counters survive a reload.
"""

from monolake.worker.service.context import ConnectionContext, RequestContext, TlsInfo
from monolake.worker.service.core import (
    FactoryStack,
    LayerFactory,
    Service,
    ServiceFactory,
    ServiceStack,
    load_layer_factory,
    push_config_layers,
)
from monolake.worker.service.state import Exported, FdSource, Stateful, restore_state

__all__ = [
    "ConnectionContext",
    "Exported",
    "FactoryStack",
    "FdSource",
    "LayerFactory",
    "RequestContext",
    "Service",
    "ServiceFactory",
    "ServiceStack",
    "Stateful",
    "TlsInfo",
    "load_layer_factory",
    "push_config_layers",
    "restore_state",
]
